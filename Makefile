# agent-finops: the two commands that matter are `make run` and `make test`; both start with `make setup`.
# Needs Python 3.11+ and Java 17+ on PATH. Everything else (virtualenv, Python packages, Kafka jars, Maven if
# missing) is installed by `make setup`, which is idempotent: a second run only checks.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# The packages mypy --strict checks (its configuration and ruff's are in pyproject.toml).
TYPED  := finops schemas producers stream_jobs sinks alerting governance dashboard

.PHONY: help setup focus-validator run test test-unit lint bench stack-up stack-down clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -e 's/:.*##/\t/'

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $@

setup: $(VENV)/.installed ## install everything: virtualenv, packages, Kafka artifacts (idempotent)
	@java -version 2>&1 | head -1 || (echo "Java 17+ is needed (apt-get install openjdk-17-jre-headless)"; exit 1)
	$(BIN)/python -c 'from finops.stack import KafkaStack, DEFAULT_CACHE; from pathlib import Path; \
	  print("kafka artifacts:", KafkaStack(Path(".finops/kafka")).ensure_artifacts())'

# The FinOps Foundation's FOCUS validator checks `finops report focus` in the tests. It needs Python 3.12+ and pins
# numpy<2 / pandas<3, so it lives in its own virtualenv (.venv-focus); without a Python 3.12+ this says why and the
# test skips, unless FOCUS_VALIDATOR_REQUIRED=1 (CI), which makes both fail.
focus-validator: setup ## build .venv-focus with the FOCUS validator (tests/integration/focus_validator.py)
	$(BIN)/python -m tests.integration.focus_validator

run: setup       ## the whole system on one machine with a demo fleet (Ctrl-C stops it)
	$(BIN)/finops demo

test: setup focus-validator ## the whole suite: unit, integration, e2e, faults (starts its own broker); TypeScript SDK too
	@command -v npm >/dev/null 2>&1 || (echo "Node.js 20+ with npm is needed for the TypeScript SDK's tests"; exit 1)
	npm --prefix producers/typescript ci --no-audit --no-fund --loglevel=error
	npm --prefix producers/typescript test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup ## the fast tests only
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

# Every check runs and reports even when an earlier one fails; the target fails if any does. lint-imports checks the
# layers of DESIGN §1 (the contracts are in pyproject.toml: shell <- parts <- ground <- schemas, no cycles).
lint: setup      ## ruff, mypy --strict and import-linter (configured in pyproject.toml); CI runs it after the tests
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/python -m mypy $(TYPED)"; $(BIN)/python -m mypy $(TYPED) || status=1; \
	echo "$(BIN)/lint-imports"; $(BIN)/lint-imports || status=1; \
	exit $$status

bench: setup     ## benchmarks, printed as a table and written to bench-results/
	$(BIN)/finops bench all

stack-up: setup  ## start the local broker and create topics
	$(BIN)/finops stack up

stack-down:      ## stop the local broker
	$(BIN)/finops stack down

clean:           ## remove local state (broker data, chdb data, spool) but keep the caches
	rm -rf .finops
