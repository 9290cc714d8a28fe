# Quickstart targets. Each creates (or reuses) a local virtual environment in .venv and installs what
# the project needs into it: the CPU torch wheel (TORCH=...), the package in editable mode, and the
# test extras (pytest, transformers for interop parity and the throughput baseline).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.morphlm-installed

.PHONY: demo test bench-throughput clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/morphlm demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

bench-throughput: $(STAMP)
	$(VENV)/bin/morphlm bench throughput

clean-venv:
	rm -rf $(VENV)
