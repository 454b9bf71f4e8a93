# `make test` and `make demo` each bootstrap .venv on a fresh machine, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# An explicit torch version: pip takes a CPU build where the index offers one for it; elsewhere pass
# TORCH="torch==2.13.0 --index-url <a CPU wheel index>" (README, "Two commands").
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

# Fashion-MNIST is the demo's data: Debian's dataset-fashion-mnist, installed here when the machine
# allows it (root, apt-get), best effort; without it the demo falls back to scikit-learn's digits.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

demo: $(VENV)/.installed
	@if [ ! -f $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's dataset-fashion-mnist for the demo (best effort)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
	    || echo "could not install dataset-fashion-mnist; the demo uses scikit-learn's digits instead"; \
	fi
	$(VENV)/bin/btkd demo

clean:
	rm -rf $(VENV) runs reports .pytest_cache .hypothesis
