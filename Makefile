# One entry point for humans and CI. Every target creates .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed

.PHONY: install test test-airflow2 test-py313 lint compat demo bench bench-webhooks simulator clean postgresql

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The one test command: lint, types, then the same pytest suite on both Airflow lines and three Pythons:
## Airflow 3.3 on Python 3.11 (.venv), Airflow 2.11 on Python 3.12 (.venv-airflow2), Airflow 3.3 on
## Python 3.13 (.venv-py313). Each leg runs on pytest-xdist workers (own simulator and Airflow homes each).
XDIST ?= -n 2
test: lint postgresql
	@echo "==> pytest on Airflow 3.3 ($$($(BIN)/python -V))"
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	$(MAKE) test-airflow2
	$(MAKE) test-py313

## Airflow 2.11 in its own virtualenv, pinned by constraints-airflow2.txt (frozen from a resolved env:
## regenerate with `uv pip freeze --exclude-editable --python .venv-airflow2/bin/python`).
## It runs on the newest Python this machine has for it (3.12; falls back to $(PYTHON)).
AF2 := .venv-airflow2
AF2_STAMP := $(AF2)/.installed
PYENV_ROOT ?= $(HOME)/.pyenv
AF2_PYTHON ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12) $(PYTHON))

$(AF2_STAMP): pyproject.toml constraints-airflow2.txt | $(STAMP)
	test -x $(AF2)/bin/python || $(BIN)/uv venv --quiet --python $(AF2_PYTHON) $(AF2)
	$(BIN)/uv pip install --quiet --python $(AF2)/bin/python -c constraints-airflow2.txt -e ".[test]"
	touch $(AF2_STAMP)

test-airflow2: $(AF2_STAMP) postgresql
	@echo "==> pytest on Airflow 2.11 ($$($(AF2)/bin/python -V))"
	AIRFLOW_HOME=$(CURDIR)/$(AF2)/airflow_home $(AF2)/bin/python -m pytest -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

## Airflow 3.3 on the newest Python it supports that this machine has (3.13), same pins as .venv.
## Skipped, with a note, where no Python 3.13 is installed.
PY313 := .venv-py313
PY313_STAMP := $(PY313)/.installed
PY313_PYTHON ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.13*/bin/python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13))

$(PY313_STAMP): pyproject.toml constraints.txt | $(STAMP)
	test -x $(PY313)/bin/python || $(BIN)/uv venv --quiet --python $(PY313_PYTHON) $(PY313)
	$(BIN)/uv pip install --quiet --python $(PY313)/bin/python -c constraints.txt -e ".[test,bench]"
	touch $(PY313_STAMP)

ifeq ($(PY313_PYTHON),)
test-py313:
	@echo "==> no Python 3.13 on this machine: the Airflow 3.3 / Python 3.13 leg did not run"
else
test-py313: $(PY313_STAMP)
	@echo "==> pytest on Airflow 3.3 ($$($(PY313)/bin/python -V))"
	AIRFLOW_HOME=$(CURDIR)/$(PY313)/airflow_home $(PY313)/bin/python -m pytest -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)
endif

## Debian's PostgreSQL server, for the webhook receiver's replica test (tests/test_webhook_postgres.py starts a
## private cluster from these binaries: initdb in a temporary directory, its own port and socket). Installed
## when missing and root (CI on a fresh machine); elsewhere the test says it skipped.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "==> installing Debian's postgresql (server binaries for the webhook replica test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "==> no PostgreSQL server binaries and not root: tests/test_webhook_postgres.py will skip"; fi

## Kept for muscle memory: the Airflow 2.11 leg.
compat: test-airflow2

## The example call-outcome ETL against the embedded simulator, in a throwaway AIRFLOW_HOME.
demo: $(STAMP)
	$(BIN)/python -m airflow_provider_dialnexa.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

## DialNexa webhook deliveries against a real api-server (docs/benchmarks.md); BENCH_ARGS="--postgres" etc.
bench-webhooks: $(STAMP) postgresql
	$(BIN)/python -m benchmarks.webhooks $(BENCH_ARGS)

simulator: $(STAMP)
	$(BIN)/dialnexa-simulator --port 8089

clean:
	rm -rf $(VENV) $(AF2) $(PY313) .demo .airflow_home .pytest_cache .mypy_cache .ruff_cache
