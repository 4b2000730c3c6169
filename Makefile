# roost — one entry point for people and CI.
#   make demo   the main job: local control plane, Helm install, canary promoted, bad model rolled back
#   make test   lint, format check, mypy --strict, import contracts, unit + e2e tests
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONPATH := $(abspath hack/devcluster)

.PHONY: help venv lint typecheck contracts unit e2e test demo bench images cluster-up cluster-down k8s-binaries system-deps examples clean

help:
	@echo "make demo | test | lint | unit | e2e | bench | images | cluster-up | cluster-down | examples"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

system-deps:
	@bash hack/system-deps.sh

k8s-binaries:
	@bash hack/k8s/build.sh >/dev/null

examples: venv
	$(BIN)/python examples/build_models.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

# The chart tests need helm (k8s-binaries) and promtool (system-deps): they fail, never skip.
unit: venv system-deps k8s-binaries
	$(BIN)/pytest -m "not e2e" tests

e2e: venv system-deps k8s-binaries
	$(BIN)/pytest -m e2e tests

# The whole suite in one pytest run, so the summary line covers unit and e2e tests together.
test: venv system-deps k8s-binaries lint typecheck contracts
	$(BIN)/pytest --durations=40 tests

cluster-up: venv system-deps k8s-binaries
	$(BIN)/python -m roost_devcluster up

cluster-down: venv
	$(BIN)/python -m roost_devcluster down

demo: venv system-deps k8s-binaries
	$(BIN)/python -m roost_devcluster.demo

bench: venv system-deps
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_logging.py
	$(BIN)/python benchmarks/bench_overload.py
	$(BIN)/python benchmarks/profile_serving.py
	$(BIN)/python benchmarks/bench_drift.py
	$(BIN)/python benchmarks/bench_gates.py
	$(BIN)/python benchmarks/bench_shadow_gate.py
	$(BIN)/python benchmarks/bench_shadow.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_accuracy.py

# Container images without a Docker engine (buildah + debootstrap base); not part of `make test`.
images:
	bash hack/build-images.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
