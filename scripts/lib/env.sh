# Sourced by the make targets that need them (never at Makefile parse time): installs on first use
# and exports where the cached environments are.
#   use_torch  -> LIBTORCH (libtorch of the torch 2.11.0 wheel) and RLHF_TORCH_PYTHON (parity tests)
#   use_helm   -> RLHF_HELM_PYTHON (helm-python-sdk, for the chart tests)
_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

use_torch() {
  local venv
  venv="$(bash "$_scripts/install-torch.sh")" || return 1
  LIBTORCH="$(compgen -G "$venv/lib/python3*/site-packages/torch" | head -n 1)"
  [ -n "$LIBTORCH" ] || { echo "libtorch is missing under $venv (install-torch.sh did not complete)" >&2; return 1; }
  export LIBTORCH RLHF_TORCH_PYTHON="$venv/bin/python"
}

use_helm() {
  local venv
  venv="$(bash "$_scripts/install-helm-sdk.sh")" || return 1
  export RLHF_HELM_PYTHON="$venv/bin/python"
}
