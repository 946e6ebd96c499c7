# rlhf-operator: `make test` (what CI runs), `make demo`, `make bench`.
# Everything installs itself idempotently; downloads and builds are cached under ~/.cache.
SHELL := /bin/bash
.DEFAULT_GOAL := test

# libtorch for the trainer: PyPI's torch 2.11.0 wheel in a cached virtual environment (tch 0.24
# links exactly that version, which the GPU machines have). It also holds transformers for the
# Hugging Face parity tests. Installed on first use.
TORCH_VENV := $(shell bash scripts/install-torch.sh)
export LIBTORCH := $(firstword $(wildcard $(TORCH_VENV)/lib/python3*/site-packages/torch))
export RLHF_TORCH_PYTHON := $(TORCH_VENV)/bin/python
# Helm's engine for offline chart rendering and linting (no helm binary installs here):
# helm-python-sdk in its own cached virtual environment; the chart tests run scripts/helm.py with it.
export RLHF_HELM_PYTHON := $(shell bash scripts/install-helm-sdk.sh)/bin/python
ifeq ($(LIBTORCH),)
$(error libtorch is missing: scripts/install-torch.sh did not complete (see its output above))
endif

.PHONY: deps build test demo bench crd

## System packages and the test control plane's binaries (built once, cached).
deps:
	bash scripts/install-deps.sh

## Release builds of every binary (one profile for tests and binaries: nothing compiles twice).
build:
	cargo build --release --workspace --bins

## Regenerate the committed CRD from the Rust types (a test fails when they drift), and the Helm
## chart's copy of it (a test checks the bytes are equal).
crd: build
	./target/release/rlhf-operator crd > crds/rlhf.dev_rlhfjobs.yaml
	cp crds/rlhf.dev_rlhfjobs.yaml charts/rlhf-operator/crds/

## Unit tests, then end-to-end tests against a real control plane started for the run.
test: deps build
	bash scripts/test.sh

## The quickstart pipeline on a local control plane, with the kubelet stand-in.
demo: deps build
	bash scripts/demo.sh

## Benchmarks (results in bench/results/): scale (100 RLHFJobs x 4 pods through the operator vs
## direct pod creates), the cpu-s PPO workload of the trainer, PPO peak memory per memory lever.
bench: deps build
	bash scripts/bench.sh
