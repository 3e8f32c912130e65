# Quick start:  make run   (virtual environment + install + the default job)
#               make test  (the test suite; installs first if needed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint format bench bench-compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the package's metadata changes; the source is installed editable.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,jax,experiments,sweep,mpi]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fastdist

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BENCH := $(BIN)/python -m pytest benchmarks -o python_files='bench_*.py' --benchmark-only

bench: $(STAMP)
	$(BENCH) --benchmark-autosave

bench-compare: $(STAMP)
	$(BENCH) --benchmark-compare --benchmark-compare-fail=median:25%

clean:
	rm -rf $(VENV) outputs multirun .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
