# gradclip: `make help` lists the targets. The first target that needs Python creates .venv and
# installs the pinned dependencies (requirements.lock) and the package; it reinstalls when
# pyproject.toml or requirements.lock change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
SCALE ?= full
LOGGER ?= none

.PHONY: help install test test-fast reproduce figures bench lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies and gradclip
	@echo "ready: source $(VENV)/bin/activate"

# The tests not marked slow run in pytest-xdist processes, one a core; then the slow ones (the
# end-to-end checks: `make reproduce`, sweeps through the command line, faults, Ctrl-C) one at a
# time, each with the machine to itself. Both halves always run; the target fails if either does.
test: $(STAMP) ## Run the whole test suite (CPU, a few minutes)
	status=0; $(PY) -m pytest -m "not slow" -n auto || status=$$?; $(PY) -m pytest -m slow || status=$$?; exit $$status

test-fast: $(STAMP) ## Run the tests that are not marked slow
	$(PY) -m pytest -m "not slow" -n auto

reproduce: $(STAMP) ## Run every experiment, then figures, tables and results/REPORT.md (SCALE=smoke|default|full, LOGGER=none|wandb)
	$(PY) scripts/reproduce.py --scale $(SCALE) --logger $(LOGGER)

figures: $(STAMP) ## Rebuild every figure in paper_figures/ from the tables in results/ (no training)
	$(PY) scripts/figures.py plot all

bench: $(STAMP) ## Speed and memory: runner vs a hand-written loop, ghost norms, populations, a sweep end to end
	$(PY) scripts/bench_runner.py

lock: $(STAMP) ## Rewrite requirements.lock from the installed environment
	{ echo "# Exact versions of every package, as installed and tested on Python 3.11 (x86_64, Linux)."; \
	  echo "# Regenerate: make lock. Ranges live in pyproject.toml."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^gradclip'; } > requirements.lock

clean: ## Remove run records and caches (keeps .venv, results/ and paper_figures/)
	rm -rf runs outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
