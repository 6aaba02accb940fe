# make study: set up .venv and run the whole study (dvc repro) on the embedded demo data.
# make test:  set up .venv and run the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup study test clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The notebooks run on kernel "python3"; register this venv's interpreter under that name.
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (rwkvlab)"
	touch $(STAMP)

setup: $(STAMP)

study: setup
	PATH=$(BIN):$$PATH dvc repro

test: setup
	PATH=$(BIN):$$PATH python -m pytest -ra

clean-venv:
	rm -rf $(VENV)
