# Everything here works on a fresh machine with only python3.11 and make installed.
#
#   make run     create .venv, install the runtime lock, serve configs/demo.yaml on :8080
#   make test    create .venv, install the dev lock, run the whole suite (tests/)
#   make lint    ruff check, ruff format --check, mypy on gateway policies health
#   make bench   python bench/run.py
#   make lock    regenerate requirements/*.lock (hashed) from pyproject.toml
#   make clean   remove .venv, caches and build artefacts
#
# Installs are hash-checked: `pip install --require-hashes -r <lock>`, then the project itself
# with `--no-deps` (editable). A stamp file per lock means pip runs again only when a lock (or
# pyproject.toml) changed.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml
# e.g. make run RUN_ARGS='--port 8081'
RUN_ARGS ?=
PYTEST_ARGS ?=

RUNTIME_LOCK := requirements/runtime.lock
DEV_LOCK := requirements/dev.lock
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev

# The lock is resolved for the platform every machine, CI and the image run on.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
UV_VERSION := 0.13.9
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest allowed release.
LOCK_FLAGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help run test lint bench lock clean install install-dev

help:
	@sed -n '3,8p' Makefile | sed 's/^# */  /'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): $(RUNTIME_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(RUNTIME_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 gateway policies health
	@touch $@

$(DEV_STAMP): $(DEV_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 gateway policies health
	@touch $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/gateway serve --config $(CONFIG) $(RUN_ARGS)

# pytest's own exit status is the target's: 5 (no test collected) fails like any failure.
test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway policies health

bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

lock: | $(BIN)/uv
	$(BIN)/uv pip compile --quiet pyproject.toml requirements/build.in --extra litellm \
		--generate-hashes $(LOCK_TARGET) $(LOCK_FLAGS) --custom-compile-command "make lock" \
		-o $(RUNTIME_LOCK)
	$(BIN)/uv pip compile --quiet pyproject.toml requirements/build.in --extra litellm --extra dev \
		-c $(RUNTIME_LOCK) --generate-hashes $(LOCK_TARGET) $(LOCK_FLAGS) \
		--custom-compile-command "make lock" -o $(DEV_LOCK)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
