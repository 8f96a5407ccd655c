# The two commands of the README: `make pipeline` and `make test`.
# Both build .venv from requirements.txt on first use (and again when it changes).
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/pipeline/tiny.py
# glibc's malloc on transparent huge pages: XLA:CPU's per-step temporaries otherwise fault in
# 4 KiB at a time (train/cli.py child_env, which gives it to every stage and trial process).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: test pipeline lint venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Test-only: transformers and the CPU torch for the Hugging Face parity tests.
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

lint: venv
	$(VENV)/bin/ruff check .

test: lint $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

pipeline: venv
	$(PY) -m scripts.pipeline --config $(CONFIG)
