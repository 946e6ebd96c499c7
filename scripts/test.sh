#!/usr/bin/env bash
# `make test`'s tests: starts a throw-away control plane, runs every test binary of the workspace
# against it and always stops it. The binaries run in two lanes at once: those that train (CPU-bound,
# one at a time) beside those that mostly wait on the API server (scripts/lib/test-binaries.py).
# RLHF_TEST_LANES=1 runs them all one after another. Each binary's output goes to
# .state/test-logs/<package>-<binary>.log; a failing one's tail is printed, and every binary's
# time is summed up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$PWD/.state/test-controlplane"
LOGS="$PWD/.state/test-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# Compile every test target first (one cargo, both cores), listing the executables.
cargo test --release --workspace --no-run --message-format=json-render-diagnostics >"$LOGS/artifacts.json"
python3 scripts/lib/test-binaries.py <"$LOGS/artifacts.json" >"$LOGS/binaries.tsv"

bash tests/controlplane/up.sh "$DIR"
trap 'bash tests/controlplane/down.sh "$DIR" >/dev/null' EXIT
export RLHF_TEST_KUBECONFIG="$DIR/kubeconfig"

# run_lane LANE: runs that lane's binaries in order, each from its package's folder as cargo
# would; writes "<status> <seconds> <name>" lines to $LOGS/<lane>.results.
run_lane() {
  local lane=$1 name dir exe start status
  : >"$LOGS/$lane.results"
  while IFS=$'\t' read -r l name dir exe; do
    [ "$l" = "$lane" ] || [ "${RLHF_TEST_LANES:-2}" = 1 ] || continue
    start=$(date +%s)
    if (cd "$dir" && "$exe") >"$LOGS/$name.log" 2>&1; then status=PASS; else status=FAIL; fi
    echo "$status $(($(date +%s) - start)) $name" | tee -a "$LOGS/$lane.results"
    grep -h '^test result:' "$LOGS/$name.log" || true
    if [ $status = FAIL ]; then
      echo "---- $name failed; last lines of $LOGS/$name.log:"
      tail -n 150 "$LOGS/$name.log"
      echo "----"
    fi
  done <"$LOGS/binaries.tsv"
}

started=$(date +%s)
if [ "${RLHF_TEST_LANES:-2}" = 1 ]; then
  run_lane all
else
  run_lane api &
  api_lane=$!
  run_lane cpu
  wait $api_lane || true
fi

echo "== test binaries (seconds, slowest first), $(($(date +%s) - started)) s in all"
sort -k2 -n -r "$LOGS"/*.results
count() { grep -h '^test result:' "$LOGS"/*.log | sed -n "s/.* \([0-9]*\) $1.*/\1/p" | awk '{s += $1} END {print s + 0}'; }
failing_binaries=$(cat "$LOGS"/*.results | grep -c '^FAIL' || true)
passed=$(count passed)
failed=$(count failed)
echo "${passed:-0} passed, ${failed:-0} failed"
[ "$failing_binaries" = 0 ] || { echo "test: $failing_binaries test binaries failed" >&2; exit 1; }

# The trainer binary must start with the trainer image's library layout.
bash trainer-image/check-image-layout.sh target/release/rlhf-trainer "$LIBTORCH"
