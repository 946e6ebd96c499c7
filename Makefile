# rlhf-operator: `make test` (what CI runs), `make demo`, `make bench`.
# Everything installs itself idempotently; downloads and builds are cached under ~/.cache.
SHELL := /bin/bash
.DEFAULT_GOAL := test

.PHONY: deps build test demo bench crd

## System packages and the test control plane's binaries (built once, cached).
deps:
	bash scripts/install-deps.sh

## Release builds of every binary (one profile for tests and binaries: nothing compiles twice).
build:
	cargo build --release --workspace --bins

## Regenerate the committed CRD from the Rust types (a test fails when they drift).
crd: build
	./target/release/rlhf-operator crd > crds/rlhf.dev_rlhfjobs.yaml

## Unit tests, then end-to-end tests against a real control plane started for the run.
test: deps build
	bash scripts/test.sh

## The quickstart pipeline on a local control plane, with the kubelet stand-in.
demo: deps build
	bash scripts/demo.sh

## Scale benchmark: 100 RLHFJobs x 4 pods through the operator vs direct pod creates.
bench: deps build
	bash scripts/bench.sh
