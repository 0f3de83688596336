# Set-up and the two jobs of the README. Everything lives in .venv; nothing else is needed but Python 3.11+.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints-dev.txt
EXTRAS ?= test,zoo,germline,esmfold2,parquet,unirep,dask,faiss,baselines,datasets

# pytest workers: the suite is sized for the 2-core machine; more cores, more workers. The slowest
# tests are listed after each run, to keep the first tier under 10 minutes.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

.PHONY: setup demo test test-slow test-all lint bench clean

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

# first tier: every test but those slow by nature (under 10 minutes on 2 cores)
test: setup lint
	$(PYTEST) -m "not slow"

# second tier: the tests slow by nature (a real SLURM cluster, the studies' quick runs, the real-model
# zoo end to end, the demo)
test-slow: setup
	$(PYTEST) -m slow

test-all: test test-slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
