# The two commands of the README. Each does all set-up on a fresh machine (virtualenv + install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup clean-results

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

## demo: run the whole DAG on the synthetic world (config.yaml), on this machine
demo: setup
	$(BIN)/snakemake --profile profiles/local

## test: the linter (ruff: pyproject.toml), then the test suite (the Slurm tests need a one-node Slurm: see .ci/run)
test: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest ran no test" >&2; exit 1; fi; exit $$rc

clean-results:
	rm -rf results logs benchmarks .snakemake
