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
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m compileall -q ledger consensus api
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q ledger consensus api tests bench
	touch $@

run: $(VENV)/.run-installed
	$(BIN)/tanlian dev --data $(DATA) --port $(PORT)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers, one per core; the consortium and crash tests share one (tests/conftest.py).
# Schemathesis's generated tests are not run under xdist: they run after, in one process.
# The fifteen slowest tests are printed: the suite must stay under 20 minutes on two cores.
PYTEST_WORKERS ?= 2
SCHEMATHESIS := tests/api/test_schemathesis.py

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 --ignore=$(SCHEMATHESIS)
	$(BIN)/pytest --cov-append $(SCHEMATHESIS)

bench: $(VENV)/.test-installed
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage
