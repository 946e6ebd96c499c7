#!/usr/bin/env bash
# Lets a fresh clone reuse what earlier clones on this machine compiled: when ./target does not
# exist yet, it becomes a link to one cargo target folder in the project's cache, so only the
# workspace's own crates are rebuilt (their sources are newer), not the ~400 dependencies.
# ./target/release/ still holds the binaries. RLHF_SHARED_TARGET=0 keeps a private ./target.
#   cargo-target.sh [--if-cached]   --if-cached: link only to a folder that exists (make crd
#                                   creates nothing under ~/.cache)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -e target ] || [ -L target ] && exit 0
[ "${RLHF_SHARED_TARGET:-1}" = 0 ] && exit 0
shared="${RLHF_CACHE:-$HOME/.cache/rlhf-operator}/cargo-target"
if [ ! -d "$shared" ]; then
  [ "${1:-}" = --if-cached ] && exit 0
  mkdir -p "$shared"
fi
ln -s "$shared" target
echo "cargo-target: ./target -> $shared (compiled crates shared by this machine's clones)" >&2
