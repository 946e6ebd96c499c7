# Sourced by the install-*.sh scripts: a Python virtual environment under the project's cache
# that is made once and reused. A marker file says it is complete, so an interrupted install is
# redone instead of trusted.
#   cached_venv NAME MARKER "WHAT (for the message)" PIP_ARGS...   -> sets VENV
cached_venv() {
  local name=$1 marker=$2 what=$3
  shift 3
  VENV="${RLHF_CACHE:-$HOME/.cache/rlhf-operator}/$name"
  if [ ! -f "$VENV/$marker" ]; then
    echo "$(basename "$0" .sh): creating $VENV ($what, once)" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    venv_pip install "$@"
    touch "$VENV/$marker"
  fi
}

# pip of the environment cached_venv made, quiet, with the shared download cache.
venv_pip() {
  "$VENV/bin/pip" "$1" -q --disable-pip-version-check --cache-dir "$HOME/.cache/pip" "${@:2}" >&2
}
