# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap .venv idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# Where torch comes from. Empty: PyPI (this project's dev machines serve the CPU build from local disk).
# CI runners elsewhere set https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
REQS := requirements/runtime.txt requirements/runtime-nodeps.txt requirements/dev.txt requirements/constraints.txt

.PHONY: setup run test lint serve clean

setup: $(STAMP)

# Re-run the install only when a requirements file changes. torch is the CPU build from the pinned
# version; the Docker image brings its own CUDA build instead.
$(STAMP): $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -r requirements/runtime.txt -r requirements/dev.txt -c requirements/constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/runtime-nodeps.txt -c requirements/constraints.txt
	touch $(STAMP)

# The main job: ./test_input.json through handler.py on the built-in tiny model; images land in ./output/.
run: $(STAMP)
	$(BIN)/python handler.py

test: $(STAMP)
	$(BIN)/python -m ruff check .
	TORCH_INDEX=$(TORCH_INDEX) $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) output .pytest_cache .ruff_cache
