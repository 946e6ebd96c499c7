#!/usr/bin/env bash
# Installs libtorch for the trainer (tch 0.24 links torch 2.11.0, the version the GPU machines
# have) from PyPI's torch wheel into a cached virtual environment, with transformers for the
# Hugging Face parity tests. Idempotent: a marker file says the environment is complete.
# Prints the environment's path; the torch library folder is <path>/lib/python3*/site-packages/torch.
set -euo pipefail
. "$(dirname "$0")/lib/cached-venv.sh"
cached_venv torch-2.11.0 .complete "torch 2.11.0 wheel, ~4.6 GB" torch==2.11.0 transformers==4.57.1 safetensors numpy
# CUDA headers the trainer's NCCL shim compiles against (nccl.h comes with torch's own
# nvidia-nccl-cu13); small, and added to environments made before they were needed.
if ! compgen -G "$VENV/lib/python3*/site-packages/nvidia/cu13/include/crt/host_config.h" >/dev/null; then
  venv_pip install --no-deps nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
fi
echo "$VENV"
