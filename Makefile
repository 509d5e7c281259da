# Two entry points for a fresh machine (Python 3.11 + pip):
#   make run   -> create .venv, install, run the main job (hits-stamps run)
#   make test  -> create .venv, install, run ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU PyTorch first, so the project's torch range is already satisfied
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	# every package at the exact version of constraints.txt: a new release cannot change behaviour
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/hits-stamps run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments

test: $(STAMP) lint
	$(BIN)/pytest -rs

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
