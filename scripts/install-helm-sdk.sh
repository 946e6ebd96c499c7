#!/usr/bin/env bash
# Installs Helm's engine for offline chart rendering and linting: PyPI's helm-python-sdk 0.2.2
# (Helm v4's Go SDK as libhelm_c.so behind a ctypes binding; no helm binary is installable here)
# into a cached virtual environment. Idempotent: a marker file says the environment is complete.
# Prints the environment's path (like install-torch.sh); scripts/helm.py runs with <path>/bin/python.
set -euo pipefail
. "$(dirname "$0")/lib/cached-venv.sh"
cached_venv helm-sdk .complete-0.2.2 "helm-python-sdk 0.2.2" helm-python-sdk==0.2.2
echo "$VENV"
