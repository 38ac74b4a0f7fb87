# Each target does all of its own set-up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-decode clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidtune demo-data --out ./vidtune-data/inputs
	$(BIN)/vidtune run jobs/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check platform tests
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check platform tests
	$(BIN)/ruff format --check platform tests

bench-decode: $(STAMP)
	$(BIN)/vidtune bench decode

clean:
	rm -rf vidtune-data mlflow.db mlruns
