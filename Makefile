# authsvc — the two commands of the README are `make run` and `make test`.
# `make help` lists every target.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export AUTHSVC_ENV ?= development

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/authsvc: setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/authsvc ## create the virtualenv and install authsvc with its test tools

run: venv ## set up and serve on http://127.0.0.1:8000 (SQLite, development secrets)
	$(BIN)/authsvc init-db
	exec $(BIN)/authsvc serve

testenv: ## install the real Orthanc, nginx, OIDC provider, Chromium and PostgreSQL binaries
	bash scripts/testenv/setup.sh

lint: venv ## ruff (lint + format check), mypy --strict, import layers and circles
	$(BIN)/ruff check authsvc tests bench scripts
	$(BIN)/ruff format --check authsvc tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_import_cycles.py

test: venv testenv lint ## set everything up, lint, type-check, run the whole suite (integration too)
	AUTHSVC_ENV=testing $(BIN)/python -m pytest --cov --cov-report=term

bench: venv testenv ## print the hot-path benchmarks (numbers, not assertions)
	AUTHSVC_ENV=testing $(BIN)/python bench/run.py
	AUTHSVC_ENV=testing $(BIN)/python bench/albums.py
	AUTHSVC_ENV=testing $(BIN)/python bench/upload.py
	AUTHSVC_ENV=testing $(BIN)/python bench/gate.py
	AUTHSVC_ENV=testing $(BIN)/python bench/plugin.py

fuzz: venv ## the long schemathesis run: 200 generated requests per JSON operation and mode
	AUTHSVC_ENV=testing FUZZ_EXAMPLES=200 $(BIN)/python -m pytest tests/functional/test_fuzz.py

results: venv testenv ## run the hardening suites and short benchmarks; write docs/results.md
	AUTHSVC_ENV=testing $(BIN)/python bench/results.py --bench

lock: ## re-resolve setup.cfg's dependencies in a scratch venv and rewrite constraints.txt
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet -e '.[test]'
	{ sed -n '1,/^# Regenerate/p' constraints.txt; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/lock-venv

format: venv ## rewrite files with ruff format and import sorting
	$(BIN)/ruff check --fix --select I authsvc tests bench
	$(BIN)/ruff format authsvc tests bench

.PHONY: help venv run testenv lint test bench fuzz results lock format
