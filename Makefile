# MiniMax-M2 for Megatron-core.
#   make demo   build a tiny MiniMax-M2 checkpoint and show Megatron-vs-HF parity
#   make test   the whole test suite
#   make test-native     the same features native in megatron-core: patch its sdist with
#                        tools/upstream/make_native.py, run the native and parity tests against it
#   make bench-convert   HF -> Megatron converter memory and throughput (docs/benchmarks.md)
#   make bench-reference   peak memory of the layer-by-layer HF reference (docs/benchmarks.md)
# Each creates or reuses .venv (Python 3.12) and installs the project into it.

VENV ?= .venv
PY := $(VENV)/bin/python

NATIVE_TREE := $(CURDIR)/build/native/megatron-core
# Tests that must hold when megatron-core itself carries the features (the config, QK norm, fp32
# router, HF parity of logits and gradients, the training step and its checkpoints, the model as
# a HybridModel built on megatron-core's own HybridStack).
NATIVE_UNIT_TESTS := \
	tests/unit_tests/transformer \
	tests/unit_tests/training/test_arguments.py \
	tests/unit_tests/training/test_pretrain_gpt.py \
	tests/unit_tests/training/test_pretrain_hybrid.py \
	tests/unit_tests/models/minimax_m2/test_parity.py \
	tests/unit_tests/models/hybrid

.PHONY: venv demo test test-native bench-convert bench-reference clean

venv:
	@tools/bootstrap_venv.sh $(VENV)

demo: venv
	$(PY) examples/minimax_m2/demo.py

test: venv
	$(PY) -m pytest tests/unit_tests -q

test-native: venv
	$(PY) tools/upstream/prepare_native_tree.py --out $(NATIVE_TREE)
	MEGATRON_MINIMAX_NATIVE_TREE=$(NATIVE_TREE) PYTHONPATH=$(NATIVE_TREE) \
		$(PY) -m pytest -q tests/native $(NATIVE_UNIT_TESTS)

bench-convert: venv
	$(PY) tools/bench/bench_convert.py

bench-reference: venv
	$(PY) tools/bench/bench_reference.py

clean:
	rm -rf $(VENV) build .cache *.egg-info
