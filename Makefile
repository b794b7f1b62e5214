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

# The main job: train the default model on eight Gaussians, sample it, evaluate it, and report
# on mixing against data-space HMC from the same start points; demo_run/ ends up with the
# metrics, checkpoint, draws, evaluation, plots and the report. Training runs compiled
# (torch.compile; 750 steps keep the demo near 2 minutes), and so does the latent sampling,
# on the training's 256 chains: it finds the graphs Inductor compiled for them in its
# on-disk cache. The two samplings run side by side, one core each.
demo: $(STAMP)
	$(BIN)/pyro-flowebm train --data eight_gaussians --out demo_run --overwrite --steps 750
	$(BIN)/pyro-flowebm sample --run demo_run --out demo_run/samples.nc --overwrite \
		--num-chains 256 --num-samples 200 --warmup-steps 100 --compile --no-progress \
		&& $(BIN)/pyro-flowebm evaluate --run demo_run --samples demo_run/samples.nc \
		--no-progress & \
	$(BIN)/pyro-flowebm sample --run demo_run --out demo_run/samples_data.nc --overwrite \
		--sampler data-hmc --num-chains 64 --num-samples 200 --warmup-steps 100 --no-progress; \
	status=$$?; wait $$! || exit 1; exit $$status
	$(BIN)/pyro-flowebm report demo_run --compare demo_run/samples_data.nc \
		--out demo_run/report.html

# The layer order of docs/architecture.md is checked by import-linter (contracts in pyproject.toml).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo_run demo_output .pytest_cache .ruff_cache
