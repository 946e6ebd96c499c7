#!/usr/bin/env bash
# Installs libtorch for the trainer (tch 0.24 links torch 2.11.0, the version the GPU machines
# have) from PyPI's torch wheel into a cached virtual environment, with transformers for the
# Hugging Face parity tests. Idempotent: a marker file says the environment is complete.
# Prints the environment's path; the torch library folder is <path>/lib/python3*/site-packages/torch.
set -euo pipefail
CACHE="${RLHF_CACHE:-$HOME/.cache/rlhf-operator}"
VENV="$CACHE/torch-2.11.0"
MARKER="$VENV/.complete"
if [ ! -f "$MARKER" ]; then
  echo "install-torch: creating $VENV (torch 2.11.0 wheel, ~4.6 GB, once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --cache-dir "$HOME/.cache/pip" \
    torch==2.11.0 transformers==4.57.1 safetensors numpy >&2
  touch "$MARKER"
fi
# CUDA headers the trainer's NCCL shim compiles against (nccl.h comes with torch's own
# nvidia-nccl-cu13); small, and added to environments made before they were needed.
if ! compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu13/include/crt/host_config.h" >/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check --cache-dir "$HOME/.cache/pip" --no-deps \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 >&2
fi
echo "$VENV"
