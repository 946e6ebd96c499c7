#!/usr/bin/env bash
# Checks that rlhf-trainer starts with exactly the library layout of trainer-image/Dockerfile:
# the image's folders are recreated under a scratch root (hard links, no copies), the binary's
# RUNPATH is pointed at the libtorch folder inside that root, and the binary must then resolve
# every library inside the root and run, with an empty environment.
#   usage: check-image-layout.sh BINARY LIBTORCH
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY LIBTORCH" >&2; exit 2; }
BIN=$1; LIBTORCH=$2
SITE=opt/torch/lib/python3.11/site-packages   # as in the Dockerfile
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/$SITE/torch" "$ROOT/usr/local/bin"
cp -al "$LIBTORCH/lib" "$ROOT/$SITE/torch/lib"
cp -al "$LIBTORCH/../nvidia" "$ROOT/$SITE/nvidia"
cp "$BIN" "$ROOT/usr/local/bin/rlhf-trainer"
patchelf --set-rpath "$ROOT/$SITE/torch/lib" "$ROOT/usr/local/bin/rlhf-trainer"
deps=$(env -i ldd "$ROOT/usr/local/bin/rlhf-trainer")
if grep -q "not found" <<<"$deps"; then
  echo "image layout: unresolved libraries:" >&2; grep "not found" <<<"$deps" >&2; exit 1
fi
outside=$(grep -E "libtorch|libc10|libcudart|libnccl|libcublas" <<<"$deps" | grep -v "$ROOT" || true)
if [ -n "$outside" ]; then
  echo "image layout: libraries resolved outside the image layout:" >&2; echo "$outside" >&2; exit 1
fi
grep -q "libtorch_cuda.so => $ROOT" <<<"$deps" || { echo "image layout: libtorch_cuda.so is not linked" >&2; exit 1; }
env -i "$ROOT/usr/local/bin/rlhf-trainer" --version
echo "image layout: ok ($(grep -c '=> /' <<<"$deps") libraries, all inside the layout)"
