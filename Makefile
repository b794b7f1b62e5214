# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing
# and install the project with the pins in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

# The main job: train the default model on eight Gaussians, sample it, evaluate it; the run
# directory demo_run/ ends up with the metrics, checkpoint, draws, evaluation and plots.
demo: $(STAMP)
	$(BIN)/pyro-flowebm train --data eight_gaussians --out demo_run --overwrite
	$(BIN)/pyro-flowebm sample --run demo_run --out demo_run/samples.nc --overwrite
	$(BIN)/pyro-flowebm evaluate --run demo_run --samples demo_run/samples.nc

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo_run demo_output .pytest_cache .ruff_cache
