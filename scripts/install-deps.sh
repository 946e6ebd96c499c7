#!/usr/bin/env bash
# Installs what the tests and the demo need, idempotently: kubectl must exist; etcd and the
# Kubernetes 1.20 control plane binaries come from tests/controlplane/install-k8s.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install-deps: python3 is required (free-port picking)" >&2; exit 1; }
if ! command -v kubectl >/dev/null; then
  echo "install-deps: kubectl is missing; installing Debian's kubernetes-client" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client
fi
bash tests/controlplane/install-k8s.sh
