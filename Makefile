# The two commands a newcomer needs: `make dev` and `make test`. Both set everything up
# (a .venv with the project and its dev extras) on a machine with only Python 3.11+ and make.
PYTHON ?= python3
PORT ?= 8080
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install dev test test-unit lint format bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/tally dev --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest -m unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

# 10 minutes (SOAK_SECONDS) of mixed load with a fault every SOAK_FAULT_EVERY seconds, exact
# totals at the end, then a larger Schemathesis run; the report goes into docs/reliability.md.
SOAK_HOSTILE_EXAMPLES ?= 200
soak: $(STAMP)
	$(BIN)/python -m tests.faults.soak --report docs/reliability.md --hostile-examples $(SOAK_HOSTILE_EXAMPLES)

clean:
	rm -rf $(VENV) .tally .mypy_cache .ruff_cache .pytest_cache .hypothesis
