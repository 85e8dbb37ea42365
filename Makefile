# Two commands on a fresh machine:  make demo  /  make test
# Everything installs into .venv; torch is pinned to the CPU-capable 2.13.0 wheel first so pip
# never pulls a CUDA build on a CPU machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
ME_VENV ?= .venv-minkowski
export DDPO_DATA ?= $(abspath ../shared/data)

.PHONY: venv test test-minkowski demo bench mini-benchmark golden minkowski clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[ros,dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider test

demo: $(STAMP)
	$(VENV)/bin/ddpo demo

# Speed and memory: the sparse backends (adds MinkowskiEngine when $(ME_VENV) exists), then whole
# scenes (steps, shortcuts, point counts; ~40 min on 2 cores).
bench: $(STAMP)
	$(VENV)/bin/ddpo bench --out bench/results.json $(if $(wildcard $(ME_VENV)/bin/python),--minkowski-python $(ME_VENV)/bin/python)
	$(VENV)/bin/ddpo bench-scene --out bench/scene.json

# Distil the bundled mini teacher with Distillation-DPO and score distillation (3 seeds + ablations) on this
# CPU and score every row (bench/mini_benchmark.json/.md; docs/mini-scale.md, "Mini-scale benchmark"). Hours on 2 cores.
mini-benchmark: $(STAMP)
	$(PY) tools/mini_benchmark.py --out runs/mini

# Build MinkowskiEngine 0.5.4 CPU-only into $(ME_VENV) (~7 min on 2 cores). Never run in CI.
minkowski:
	bash tools/build_minkowski.sh $(ME_VENV)

# The parity tests again, live against MinkowskiEngine (needs `make minkowski`).
test-minkowski: minkowski
	PYTHONPATH=$(CURDIR) $(ME_VENV)/bin/python -m pytest -q -p no:cacheprovider test/test_sparse_parity.py test/test_sparse.py

# Regenerate the golden parity fixtures from a real MinkowskiEngine build.
golden: minkowski
	PYTHONPATH=$(CURDIR) $(ME_VENV)/bin/python tools/make_golden.py test/fixtures/minkowski_golden

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
