# `make test` and `make demo` work on a fresh machine: the first run creates .venv and installs
# the project with its dev extra (about a minute and a half, with pip's own output showing what
# it fetches); later runs reinstall only when pyproject.toml or the version changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint typecheck unit demo bench protos clean cluster cluster-down test-cluster

$(STAMP): pyproject.toml src/dew_csi/__init__.py
	@echo "==> [1/3] $(VENV): a virtual environment for dew-csi ($(PYTHON))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] $(VENV): upgrading pip"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> [3/3] $(VENV): installing dew-csi and its dev extra (the first time: about a minute)"
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/dew-csi demo

bench: $(STAMP)
	$(BIN)/python benchmarks/apiserver.py

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# A real single-node Kubernetes built here (hack/, test infrastructure; README "Testing on a real
# cluster"): needs root and Go. Builds are cached in ~/.cache/dew-csi.
cluster: $(STAMP)
	bash hack/install-deps.sh
	VENV_BIN=$(CURDIR)/$(BIN) bash hack/cluster-up.sh

cluster-down:
	bash hack/cluster-down.sh

# The tests against that cluster (tests/cluster, marker `cluster`); `make cluster` first.
test-cluster: $(STAMP)
	DEW_CSI_TEST_CLUSTER=1 $(BIN)/pytest -m cluster tests/cluster
