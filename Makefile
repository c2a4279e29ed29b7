# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck contracts protos protos-check ci bench minilm clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,models,sim]'
	touch $(STAMP)

demo: venv
	$(PY) scripts/demo.py
	$(PY) -m simulator.cli run simulator/scenarios/quickstart.yaml --report .demo/quickstart.json --html .demo/quickstart.html

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

contracts: venv
	$(VENV)/bin/lint-imports

protos: venv
	PYTHON=$(PY) scripts/gen_protos.sh

protos-check: venv
	PYTHON=$(PY) scripts/gen_protos.sh --check

ci: lint typecheck contracts protos-check test

bench: venv
	$(PY) bench/infer_overhead.py

# Export all-MiniLM-L6-v2 to ONNX once (cached in .cache/models/minilm); torch first, as a CPU build.
minilm: venv
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export]'
	$(PY) scripts/export_minilm.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
