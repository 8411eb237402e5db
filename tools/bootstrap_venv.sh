#!/usr/bin/env bash
# Create (or reuse) the project's Python 3.12 virtual environment and install the
# project into it, editable, with its test extras.
#
#   tools/bootstrap_venv.sh [VENV_DIR]      (default: .venv)
#
# megatron-core 0.19 needs Python >= 3.12. We look for an interpreter in this
# order: $PYTHON, python3.12 on PATH, pyenv's newest 3.12, then any python3 that
# is already >= 3.12.
set -euo pipefail

venv=${1:-.venv}
stamp="$venv/.installed"

works() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
    if [ -n "${PYTHON:-}" ] && works "$PYTHON"; then echo "$PYTHON"; return; fi
    if command -v python3.12 >/dev/null 2>&1 && works python3.12; then command -v python3.12; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        local root ver
        root=$(pyenv root)
        ver=$(ls -d "$root"/versions/3.12* 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -n "$ver" ] && works "$ver/bin/python3"; then echo "$ver/bin/python3"; return; fi
    fi
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1 && works "$p"; then command -v "$p"; return; fi
    done
    echo "error: no Python >= 3.12 found (set PYTHON=/path/to/python3.12)" >&2
    exit 2
}

if [ ! -x "$venv/bin/python" ] || ! works "$venv/bin/python"; then
    py=$(find_python)
    echo "creating $venv with $py ($("$py" --version 2>&1))"
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi

# Reinstall only when the dependency list changed.
want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
