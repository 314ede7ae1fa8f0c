# Every target bootstraps .venv itself: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.py constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: setup.py constraints.txt | $(BIN)/python
	$(PIP) -e '.[test]'
	touch $@

# Trains from scratch each time: the demo's MODEL_DIR is its own.
demo: $(VENV)/.installed
	rm -rf runs/demo
	$(BIN)/python -m flan_jax.train --gin_file=gin/runs/demo.gin

# The tests marked slow (minutes each: the 540B fit check, kill-and-restart runs on several
# processes) run in CI (.ci/run: `make test SLOW=1`); locally `make test` skips them.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests $(if $(SLOW),,-m "not slow")

# Rewrites BENCHMARKS.md (~15 min on 2 idle CPU cores); BENCH_QUICK=1 is a few-minute smoke run.
bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.run $(if $(BENCH_QUICK),--quick)

clean:
	rm -rf $(VENV) runs .pytest_cache
