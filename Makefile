# Quick start:  make run   (virtual environment + the core install + the default job)
#               make test  (the test suite; installs what the tests need first)
# Every install goes through constraints.txt: the versions that were tested.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORE   := $(VENV)/.installed-core
PIP    := $(BIN)/pip install --quiet -c constraints.txt
# What the tests need: every extra they exercise (peers only for benchmarks/peers).
TEST_EXTRAS := dev,jax,experiments,sweep,mpi,tensorboard,mnist1d

.PHONY: install run test lint format bench bench-compare clean constraints book book-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the package's metadata changes; the source is installed editable.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[$(TEST_EXTRAS)]'
	touch $(STAMP) $(CORE)

# The default job needs only the core install.
$(CORE): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $(CORE)

install: $(STAMP)

run: $(CORE)
	$(BIN)/fastdist

# Pin what is installed now (after a deliberate upgrade in the test environment).
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^fastdist'; } > constraints.new
	mv constraints.new constraints.txt

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

# The experiment book's tables from the committed per-run results (the core install suffices).
book: $(CORE)
	$(BIN)/python experiments/book.py

book-check: $(CORE)
	$(BIN)/python experiments/book.py --check

clean:
	rm -rf $(VENV) outputs multirun .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
