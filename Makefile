# Set-up is part of every target: a fresh machine needs nothing but python3.
# torch is pinned to 2.13.0 here (the CPU build on these machines; any other spelling pulls CUDA wheels);
# the package metadata accepts a range.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: setup main test test-slow lint docs
setup: $(STAMP)

# The main job: train a small GC-ResNet on the bundled handwritten digits (>= 95% validation top-1 in about a minute).
main: $(STAMP)
	$(BIN)/glocal train -c configs/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The API reference (mkdocs + mkdocstrings, from the docstrings) into site/; warnings are errors.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -q
