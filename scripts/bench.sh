#!/usr/bin/env bash
# `make bench`: starts a throw-away control plane, runs the scale benchmark against it (results
# under bench/results/), and always stops it. Extra arguments go to rlhf-bench-scale.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$PWD/.state/bench-controlplane"
bash tests/controlplane/up.sh "$DIR"
trap 'bash tests/controlplane/down.sh "$DIR" >/dev/null' EXIT
./target/release/rlhf-bench-scale --kubeconfig "$DIR/kubeconfig" --out bench/results "$@"
