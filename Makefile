# MiniMax-M2 for Megatron-core.
#   make demo   build a tiny MiniMax-M2 checkpoint and show Megatron-vs-HF parity
#   make test   the whole test suite
#   make bench-convert   HF -> Megatron converter memory and throughput (docs/benchmarks.md)
#   make bench-reference   peak memory of the layer-by-layer HF reference (docs/benchmarks.md)
# Each creates or reuses .venv (Python 3.12) and installs the project into it.

VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test bench-convert bench-reference clean

venv:
	@tools/bootstrap_venv.sh $(VENV)

demo: venv
	$(PY) examples/minimax_m2/demo.py

test: venv
	$(PY) -m pytest tests/unit_tests -q

bench-convert: venv
	$(PY) tools/bench/bench_convert.py

bench-reference: venv
	$(PY) tools/bench/bench_reference.py

clean:
	rm -rf $(VENV) build *.egg-info
