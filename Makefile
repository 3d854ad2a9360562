# Everyday targets. Each creates the virtualenv it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The browser tests drive Debian's chromium: Playwright's own browser download needs hosts that a
# closed network (CI here) cannot reach. tests/test_ui.py reads the same variable.
CHROMIUM_PATH ?= /usr/bin/chromium
export CHROMIUM_PATH
# The Node clients that tests/test_node_clients.py runs, pinned in tests/node/package-lock.json.
# Every tests/node*/ directory with a package.json is one set of Node clients, installed with `npm ci`.
# Test processes for `make pytest` (pytest-xdist). Most tests wait on the servers they start, not
# on the CPU, so four workers finish the suite in about half the time on two cores.
PYTEST_WORKERS ?= 4
NODE_CLIENTS := $(patsubst %/package.json,%,$(wildcard tests/node*/package.json))

.PHONY: run migrate test lint typecheck format pytest browser node-clients vendor bench bench-smoke bench-cluster clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt requirements-nodeps.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@ $(VENV)/.runtime

## run: install the runtime dependencies and serve on $$PORT (8000); embedded Redis unless configured
run: $(VENV)/.runtime
	$(BIN)/python app.py

## migrate: bring the conversation record (DATABASE_URL, or the SQLite file) to the newest schema;
## the service also does it at start-up, under the same lock
migrate: $(VENV)/.runtime
	$(BIN)/python -m records.database upgrade head

## test: install the test dependencies, lint, type-check and run every test
test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev browser node-clients
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal

## bench: measure the service against the machine's ceilings (a few minutes; needs redis-server)
bench: $(VENV)/.dev
	$(BIN)/python -m bench

## bench-smoke: every scenario for a moment, to prove the suite runs (CI)
bench-smoke: $(VENV)/.dev
	$(BIN)/python -m bench --smoke
	$(BIN)/python -m bench.cluster --smoke

## bench-cluster: scenario b (chunk throughput) on a three-master Redis Cluster started for the run
bench-cluster: $(VENV)/.dev
	$(BIN)/python -m bench.cluster

## browser: install Debian's chromium for the browser tests when it is missing (as root, or with sudo).
## When it cannot be installed the browser tests skip, saying why; under CI=true they fail.
browser:
	@test -x "$(CHROMIUM_PATH)" || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "could not install chromium: the browser tests cannot run" >&2; }

## node-clients: install the Node clients the tests drive (`npm ci` in each tests/node*/) when its
## node_modules is missing or older than its lockfile. Without npm the Node client tests skip, saying
## why; under CI=true they fail.
node-clients: $(addsuffix /node_modules/.package-lock.json,$(NODE_CLIENTS))

# `npm ci` writes node_modules/.package-lock.json last, so its age tells whether the install is current.
tests/%/node_modules/.package-lock.json: tests/%/package.json tests/%/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  echo "installing the Node clients for the tests (npm ci in tests/$*)"; \
	  (cd tests/$* && npm ci --no-audit --no-fund --loglevel=error) || \
	    echo "could not install the Node clients: the Node client tests cannot run" >&2; \
	else \
	  echo "npm is not installed: the Node client tests cannot run" >&2; \
	fi

## vendor: refresh the chat page's libraries (marked, DOMPurify) in static/vendor/ from the versions
## pinned in ui-vendor/package-lock.json; commit the result. The page itself needs no build step.
vendor:
	cd ui-vendor && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && node vendor.mjs

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache $(addsuffix /node_modules,$(NODE_CLIENTS)) ui-vendor/node_modules
