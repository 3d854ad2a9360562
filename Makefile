# Everyday targets. Each creates the virtualenv it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck format pytest bench bench-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

## run: install the runtime dependencies and serve on $$PORT (8000); embedded Redis unless configured
run: $(VENV)/.runtime
	$(BIN)/python app.py

## test: install the test dependencies, lint, type-check and run every test
test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest

## bench: measure the service against the machine's ceilings (a few minutes; needs redis-server)
bench: $(VENV)/.dev
	$(BIN)/python -m bench

## bench-smoke: every scenario for a moment, to prove the suite runs (CI)
bench-smoke: $(VENV)/.dev
	$(BIN)/python -m bench --smoke

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
