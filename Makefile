# Two commands for a newcomer: `make demo` (a small real transfer job) and `make test` (the test suite).
# Each installs what it needs into a local virtual environment (.venv): `make demo` the runtime lock
# (requirements.txt: torch 2.13.0, CPU build, and what hf-transfer runs on), `make test` adds the development lock
# (requirements-dev.txt: pytest, ruff, the reference libraries the tests compare against, deepspeed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Everything runs offline: the default model and the demo data ship with the installed packages.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-dev demo test test-fast lint bench clean

$(STAMP): requirements.txt pyproject.toml
	@echo "make: installing the runtime lock (requirements.txt) into $(VENV); about 2-3 minutes the first time"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	@echo "make: adding the development lock (requirements-dev.txt); about 15 seconds the first time"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

## demo: fine-tune the packaged all-MiniLM-L6-v2 on shipped Amazon book reviews, evaluate on kitchen reviews
demo: install
	$(VENV)/bin/hf-transfer train --output_dir outputs/demo

## test: the whole suite (unit, integration on tiny models, a few end-to-end runs on the packaged MiniLM)
test: install-dev
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: install-dev
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

lint: install-dev
	$(VENV)/bin/ruff check hf_transfer tests benchmarks

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf outputs .pytest_cache
