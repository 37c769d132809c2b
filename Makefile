# Everything a fresh machine needs: `make demo` (or `make serve` once the service lands) and
# `make test`. Both create .venv and install the project on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make serve` runs the reference service on the embedded default (SQLite, in-process cache).
.PHONY: serve demo test lint typecheck unit bench services clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/healthdb serve

demo: $(STAMP)
	$(BIN)/healthdb demo

services:
	./scripts/ensure-services

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP) services
	$(BIN)/python bench/read_path.py
	$(BIN)/python bench/batch_insert.py
	$(BIN)/python bench/fhir_path.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache healthdb-demo.sqlite3*
