# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap .venv idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# ComfyUI imports torchvision (pure-Python parts only). No torchaudio here: ComfyUI's audio nodes then
# fail to import, everything else works.
TORCHVISION_VERSION := 0.28.0
# Where torch comes from. Empty: PyPI (this project's dev machines serve the CPU build from local disk).
# CI runners elsewhere set https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build.
TORCH_INDEX ?=
# The lock tool (`make lock` only; installed into .venv on first use).
UV_VERSION := 0.13.9

# The ComfyUI pin (COMFYUI_VERSION, COMFYUI_COMMIT, COMFYUI_REPO): one file, also read by the Dockerfile
# and worker/embed/install.py.
include requirements/comfyui.env
COMFYUI_DIR := $(VENV)/ComfyUI
COMFYUI_MARKER := $(COMFYUI_DIR)/.worker-commit
# A read-only copy of the pinned tree, used instead of a clone where it exists (machines with no git host).
COMFYUI_VENDOR ?= ../shared/vendor/ComfyUI

STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LOCK_DEV := requirements/lock-dev.txt

.PHONY: setup run test lint lock clean

setup: $(STAMP) $(COMFYUI_MARKER)

# Python packages, re-installed when the lock (or this file: torch versions) changes. torch and torchvision
# first (the CPU build of the pinned version; the Docker image brings its own CUDA build instead), then the
# compiled lock with --no-deps: it is complete, so pip resolves nothing and never pulls another torch.
$(STAMP): $(LOCK_DEV) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet --no-deps -r $(LOCK_DEV)
	touch $(STAMP)

# ComfyUI, re-installed when the pin file changes or the installed commit is not the pinned one. A copy of
# the vendored tree where there is one (made writable: it is read-only in CI, and never run in place), else
# a clone of the pinned commit. Either way the commit lands in .worker-commit, which the worker reports.
ifneq ($(shell cat $(COMFYUI_MARKER) 2>/dev/null),$(COMFYUI_COMMIT))
.PHONY: $(COMFYUI_MARKER)
endif
$(COMFYUI_MARKER): requirements/comfyui.env
	rm -rf $(COMFYUI_DIR) $(COMFYUI_DIR).partial
	mkdir -p $(VENV)
	if [ -d $(COMFYUI_VENDOR) ] && [ "$$(cat $(COMFYUI_VENDOR).COMMIT 2>/dev/null)" = "$(COMFYUI_COMMIT)" ]; then \
		cp -r $(COMFYUI_VENDOR) $(COMFYUI_DIR).partial && chmod -R u+w $(COMFYUI_DIR).partial; \
	else \
		git clone --quiet --no-checkout $(COMFYUI_REPO) $(COMFYUI_DIR).partial \
		&& git -C $(COMFYUI_DIR).partial checkout --quiet $(COMFYUI_COMMIT) \
		&& test "$$(git -C $(COMFYUI_DIR).partial rev-parse HEAD)" = "$(COMFYUI_COMMIT)"; \
	fi
	echo $(COMFYUI_COMMIT) > $(COMFYUI_DIR).partial/.worker-commit
	mv $(COMFYUI_DIR).partial $(COMFYUI_DIR)
	@echo "ComfyUI $(COMFYUI_VERSION) ($(COMFYUI_COMMIT)) in $(COMFYUI_DIR)"

# The main job: ./test_input.json through handler.py on the built-in tiny model; images land in ./output/.
run: setup
	$(BIN)/python handler.py

test: setup
	$(BIN)/python -m ruff check .
	TORCH_INDEX=$(TORCH_INDEX) $(BIN)/python -m pytest

lint: setup
	$(BIN)/python -m ruff check .

# Regenerate the locks from pyproject.toml's dependency lists (edit those, never the lock files): lock-dev.txt
# is the whole set, lock.txt the runtime part of the same resolution. Versions already locked are kept;
# `make lock LOCK_FLAGS=--upgrade` moves every unpinned one to the newest. torch/torchvision/torchaudio (and
# so nvidia-*, triton) are left out: requirements/lock-excludes.txt.
LOCK_FLAGS ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --excludes requirements/lock-excludes.txt \
	--custom-compile-command "make lock  (from pyproject.toml: edit that, not this file)" $(LOCK_FLAGS)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(UV_COMPILE) pyproject.toml --extra dev -o $(LOCK_DEV)
	$(UV_COMPILE) pyproject.toml -c $(LOCK_DEV) -o $(LOCK)

clean:
	rm -rf $(VENV) output .pytest_cache .ruff_cache
