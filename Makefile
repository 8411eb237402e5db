# MiniMax-M2 for Megatron-core.
#   make demo   build a tiny MiniMax-M2 checkpoint and show Megatron-vs-HF parity
#   make test   the whole test suite
# Both create or reuse .venv (Python 3.12) and install the project into it.

VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test clean

venv:
	@tools/bootstrap_venv.sh $(VENV)

demo: venv
	$(PY) examples/minimax_m2/demo.py

test: venv
	$(PY) -m pytest tests/unit_tests -q

clean:
	rm -rf $(VENV) build *.egg-info
