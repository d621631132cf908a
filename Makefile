# footprints: two set-up commands, `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
INPUT  ?= ../shared/data/real/inria_austin/images/aerial_sample.tif
OUT    ?= out/demo
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck venv clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/footprints segment $(INPUT) --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline flows tests scripts
	$(VENV)/bin/ruff format --check pipeline flows tests scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy pipeline flows

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
