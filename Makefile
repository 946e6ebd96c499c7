# rlhf-operator: `make test` (what CI runs), `make demo`, `make bench`, and the quick loops
# `make unit`, `make fmt`, `make lint`, `make crd`.
# Nothing installs while make reads this file: each target installs what it needs, idempotently,
# cached under ~/.cache/rlhf-operator (libtorch: the torch 2.11.0 wheel that tch 0.24 links, the
# version the GPU machines have; Helm's engine; the control plane's binaries; compiled crates).
SHELL := /bin/bash
.DEFAULT_GOAL := test
# Recipes prefixed with these get the cached environments (scripts/lib/env.sh).
TORCH := source scripts/lib/env.sh && use_torch &&
HELM := source scripts/lib/env.sh && use_helm &&
# ./target reuses the compiled crates of earlier clones on this machine (scripts/cargo-target.sh).
TARGET := bash scripts/cargo-target.sh &&

.PHONY: deps build unit fmt lint test demo bench crd

## System packages and the test control plane's binaries (built once, cached).
deps:
	bash scripts/install-deps.sh

## Release builds of every binary (one profile for tests and binaries: nothing compiles twice).
build:
	$(TARGET) $(TORCH) cargo build --release --workspace --bins

## Every crate's unit tests; no control plane, no end-to-end test.
unit:
	$(TARGET) $(TORCH) cargo test --release --workspace --lib --bins

## Format the workspace (rustfmt.toml).
fmt:
	cargo fmt --all

## Formatting, links to docs/ARCHITECTURE.md's headings, and clippy with warnings as errors
## (release profile: it shares build-script outputs such as torch-sys's C++ wrapper with the build).
lint:
	cargo fmt --all --check
	bash scripts/check-doc-links.sh
	$(TARGET) $(TORCH) cargo clippy --release --workspace --all-targets -- -D warnings

## Regenerate the committed CRD from the Rust types (a test fails when they drift), and the Helm
## chart's copy of it (a test checks the bytes are equal). Builds the operator only.
crd:
	bash scripts/cargo-target.sh --if-cached && cargo build --release -p rlhf-operator
	./target/release/rlhf-operator crd > crds/rlhf.dev_rlhfjobs.yaml
	cp crds/rlhf.dev_rlhfjobs.yaml charts/rlhf-operator/crds/

## Lint, build, then unit tests and end-to-end tests against a real control plane started for the run.
test: deps lint build
	$(TORCH) $(HELM) bash scripts/test.sh

## The quickstart pipeline on a local control plane, with the kubelet stand-in.
demo: deps build
	$(TORCH) bash scripts/demo.sh

## Benchmarks (results in bench/results/): scale (100 RLHFJobs x 4 pods through the operator vs
## direct pod creates), the cpu-s PPO workload of the trainer, PPO peak memory per memory lever.
bench: deps build
	$(TORCH) bash scripts/bench.sh
