#!/usr/bin/env bash
# Stops a control plane started by up.sh DIR: TERM, then KILL after a grace period.
# Idempotent. Only kills a recorded pid whose command line still mentions DIR, so a pid reused
# by an unrelated process (or another control plane) is never touched.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ -f "$1/pids" ] || exit 0
DIR="$(cd "$1" && pwd -P)"

ours() { kill -0 "$1" 2>/dev/null && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF "$DIR/"; }

pids=()
while read -r _ pid; do ours "$pid" && pids+=("$pid"); done < "$DIR/pids"
# Reverse start order: clients go before the apiserver, the apiserver before etcd.
for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
for _ in $(seq 50); do
  alive=0; for p in "${pids[@]}"; do ours "$p" && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1
done
for p in "${pids[@]}"; do ours "$p" && kill -KILL "$p" 2>/dev/null || true; done
: > "$DIR/pids"
