#!/usr/bin/env bash
# Starts a throw-away control plane, runs every test against it, and always stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$PWD/.state/test-controlplane"
bash tests/controlplane/up.sh "$DIR"
trap 'bash tests/controlplane/down.sh "$DIR" >/dev/null' EXIT
RLHF_TEST_KUBECONFIG="$DIR/kubeconfig" cargo test --release --workspace
# The trainer binary must start with the trainer image's library layout (no container engine here).
bash trainer-image/check-image-layout.sh target/release/rlhf-trainer "$LIBTORCH"
