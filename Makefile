# genlab: `make train` and `make test` create the virtualenv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test test-all coverage lint clean

$(BIN)/genlab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/genlab

install: $(BIN)/genlab

train: install  ## the tuned class-conditional DCGAN (experiment=cdcgan_mnist) on the embedded MNIST digits; or your own settings: make train ARGS="model=vae"
	$(BIN)/genlab train $(or $(ARGS),experiment=cdcgan_mnist)

test: install  ## every model through each command, the trust, run-folder, signal and NaN cases
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: install  ## also the slow tier: full model x data set matrices, SIGKILL loops, compile, real launchers
	$(BIN)/python -m pytest $(ARGS)

coverage: install  ## line coverage of genlab by the whole suite (the code run in-process)
	$(BIN)/python -m pytest --cov=genlab --cov-report=term $(ARGS)

lint: install
	$(BIN)/ruff check genlab tests scripts
	$(BIN)/ruff format --check genlab tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
