# Set-up and the two jobs of the README. Everything lives in .venv; nothing else is needed but Python 3.11+.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints-dev.txt
EXTRAS ?= test,zoo,germline,esmfold2,parquet,unirep,dask,faiss,baselines,datasets

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[$(EXTRAS)]'
	$(BIN)/python -m repalign.models.antiberty install-weights
	touch $@

demo: setup
	$(BIN)/repalign demo -o demo-output

test: setup lint
	$(BIN)/python -m pytest -q

# the suite without the tests marked slow (real models, clusters, studies): minutes instead of half an hour
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
