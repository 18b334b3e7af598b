# Quick start:  make demo   (simulate a funnel, train ESM² + MMoE, print metrics, rank a request)
#               make test   (set up and run the whole test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REQUESTS ?= 50000

.PHONY: setup demo test test-fast lint bench bench-peers clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build that lies on local disk; an unpinned torch pulls CUDA (GBs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/rankengine simulate --requests $(REQUESTS) -o data/funnel
	$(BIN)/rankengine train -c engine.toml --promote champion --if "order.auc >= champion"
	$(BIN)/rankengine models versions demo
	$(BIN)/rankengine rank demo@champion --data data/funnel/test.parquet

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check rankengine plugins migrations tests benchmarks examples
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/train_throughput.py --seeds 2018 1 2 3
	$(BIN)/python benchmarks/funnel_quality.py --requests 50000
	$(BIN)/python benchmarks/objectives.py --seeds 1 2 3
	$(BIN)/python benchmarks/calibration.py --requests 50000 --seeds 1 2 3
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/streaming_scale.py

# rankengine vs DeepCTR-Torch vs torch-rechub on census (own venv in benchmarks/peers/.venv).
bench-peers: setup
	$(BIN)/python benchmarks/peers/run.py $(PEERS_ARGS)

clean:
	rm -rf runs data/funnel .pytest_cache .mypy_cache .ruff_cache
