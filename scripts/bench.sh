#!/usr/bin/env bash
# `make bench`: the scale benchmark against a throw-away control plane (always stopped), the
# cpu-s PPO workload of the trainer, and PPO's peak memory under each memory lever; results under
# bench/results/. `scripts/bench.sh scale|ppo|memory` runs one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH="${1:-all}"

scale() {
    local dir="$PWD/.state/bench-controlplane"
    bash tests/controlplane/up.sh "$dir"
    trap 'bash tests/controlplane/down.sh "'"$dir"'" >/dev/null' EXIT
    ./target/release/rlhf-bench-scale --kubeconfig "$dir/kubeconfig" --out bench/results
    bash tests/controlplane/down.sh "$dir" >/dev/null
    trap - EXIT
}

case "$WHICH" in
    scale) scale ;;
    ppo) ./target/release/rlhf-bench-ppo --out bench/results ;;
    memory) ./target/release/rlhf-bench-memory --out bench/results ;;
    all) scale; ./target/release/rlhf-bench-ppo --out bench/results; ./target/release/rlhf-bench-memory --out bench/results ;;
    *) echo "usage: scripts/bench.sh [scale|ppo|memory|all]" >&2; exit 2 ;;
esac
