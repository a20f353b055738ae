# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/dev
PORT ?= 8000

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Bytecode compiled once at install: an editable install is not compiled by pip, and where
# PYTHONDONTWRITEBYTECODE is set every process (each `tanlian` command, a node, its writer)
# would compile the project's sources again at start. Stale files are ignored by Python.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[native]'
	$(BIN)/python -m compileall -q ledger consensus api
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,native]'
	$(BIN)/python -m compileall -q ledger consensus api tests bench
	touch $@

# The hottest pure ledger modules, compiled to C by mypyc (ledger/native.py); rebuilt when
# any ledger source changes (a compiled module holds what it took from those it imports).
# Without a C compiler they run as Python source, slower, and say so each time.
NATIVE_SOURCES := $(wildcard ledger/*.py)

$(VENV)/.native-built: $(NATIVE_SOURCES) $(VENV)/.run-installed
	TANLIAN_PURE_PYTHON=1 $(BIN)/python -c 'import sys, ledger.native as n; sys.exit(n.build())' \
		&& touch $@ || true

run: $(VENV)/.run-installed $(VENV)/.native-built
	$(BIN)/tanlian dev --data $(DATA) --port $(PORT)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers, one per core. `worksteal`: a worker that runs out takes half of what the other
# has queued, so both end together; the `long` tests, collected first, stay in one worker's
# queue and run there one after another (tests/conftest.py).
# Schemathesis's generated tests are not run under xdist: they run in one process of their
# own, beside the next step. The fifteen slowest tests are printed: the suite must stay
# under 20 minutes on two cores.
PYTEST_WORKERS ?= 2
SCHEMATHESIS := tests/api/test_schemathesis.py
ASIDE := build/schemathesis

# The suite runs the compiled ledger modules (what `make run` runs). Then the ledger's own
# tests run again on their sources, which coverage can measure, while schemathesis's run in
# one more process (it used one core of two for ~160 s after the rest): its output and
# coverage data are kept aside until both end, then printed and combined. The last table is
# the whole suite's coverage.
test: lint $(VENV)/.native-built
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=15 --ignore=$(SCHEMATHESIS)
	rm -rf $(ASIDE) && mkdir -p $(ASIDE)
	COVERAGE_FILE=$(ASIDE)/.coverage $(BIN)/pytest $(SCHEMATHESIS) > $(ASIDE)/output 2>&1 & \
	aside=$$!; \
	TANLIAN_PURE_PYTHON=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal --cov-append tests/ledger; \
	ledger=$$?; wait $$aside; schemathesis=$$?; \
	echo "--- $(SCHEMATHESIS), run beside tests/ledger:"; cat $(ASIDE)/output; \
	test $$ledger -eq 0 && test $$schemathesis -eq 0
	$(BIN)/coverage combine --append $(ASIDE)/.coverage
	$(BIN)/coverage report --skip-covered

bench: $(VENV)/.test-installed $(VENV)/.native-built
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build ledger/native.json ledger/*.so .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage
