# Two entry points a newcomer needs: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m warmgw demo

lint: $(STAMP)
	$(VENV)/bin/ruff check warmgw tests loadtest

typecheck: $(STAMP)
	$(VENV)/bin/mypy warmgw

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(PY) -m loadtest.overhead

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
