# One entry point for humans and CI. Every target creates .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed

.PHONY: install test lint compat demo bench simulator clean

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

## The one test command: lint, types, the whole suite (incl. a full scheduler + triggerer run),
## then an import/construct smoke check on Airflow 2.11.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) compat

## Airflow 2.11 in its own virtualenv: the provider must stay importable there.
AF2 := .venv-airflow2
compat: $(STAMP)
	test -x $(AF2)/bin/python || $(PYTHON) -m venv $(AF2)
	$(BIN)/uv pip install --quiet --python $(AF2)/bin/python "apache-airflow==2.11.2" \
		"apache-airflow-providers-common-compat==1.23.0" -e .
	AIRFLOW_HOME=$(CURDIR)/$(AF2)/airflow_home $(AF2)/bin/python -W ignore .ci/airflow2_smoke.py

## The example call-outcome ETL against the embedded simulator, in a throwaway AIRFLOW_HOME.
demo: $(STAMP)
	$(BIN)/python -m airflow_provider_dialnexa.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

simulator: $(STAMP)
	$(BIN)/dialnexa-simulator --port 8089

clean:
	rm -rf $(VENV) $(AF2) .demo .airflow_home .pytest_cache .mypy_cache .ruff_cache
