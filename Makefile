# Two commands: `make demo` (synthetic sample -> full pipeline -> outputs + QC) and `make test` (contracts + suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[dev,torch,gpu,k8s,formats,export]'
	bash .ci/tools.sh $(VENV)/tools
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imaxt demo demo-output

# Contracts first (seconds): import layering, lint, formatting, types; then the suite.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check imaxt_pipeline tests benchmarks
	$(VENV)/bin/ruff format --check imaxt_pipeline tests benchmarks
	$(VENV)/bin/mypy

test: lint
	# Two pytest processes, one test file each at a time (module fixtures are built once): the 2 cores
	# are otherwise idle while tests wait on subprocesses, the S3 endpoint and cluster start-up.
	PATH="$(CURDIR)/$(VENV)/tools/bin:$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -n 2 --dist loadfile --durations=30

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf demo-output .pytest_cache
