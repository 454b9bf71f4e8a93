# `make test` and `make demo` each bootstrap .venv on a fresh machine, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# An explicit torch version so pip takes the CPU build on a machine without a GPU.
TORCH  ?= torch==2.13.0

.PHONY: test demo venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(VENV)/bin/btkd demo

clean:
	rm -rf $(VENV) runs reports .pytest_cache .hypothesis
