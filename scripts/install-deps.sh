#!/usr/bin/env bash
# Installs what the tests and the demo need, idempotently: kubectl must exist; etcd and the
# Kubernetes 1.20 control plane binaries come from tests/controlplane/install-k8s.sh.
# The Python environments (torch wheel, Helm's engine) download while Kubernetes compiles: on a
# new machine that overlaps ~3 minutes of network with the CPU-bound build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-torch.sh >/dev/null &
torch_install=$!
bash scripts/install-helm-sdk.sh >/dev/null &
helm_install=$!
command -v cargo >/dev/null || { echo "install-deps: cargo (Rust) is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install-deps: python3 is required (free-port picking)" >&2; exit 1; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
# patchelf: trainer-image/check-image-layout.sh rewrites a copy's RUNPATH.
if ! command -v patchelf >/dev/null; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq patchelf
fi
if ! command -v kubectl >/dev/null; then
  echo "install-deps: kubectl is missing; installing Debian's kubernetes-client" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client
fi
# prometheus + promtool: the end-to-end test scrapes the operator and the trainers with a real
# Prometheus and runs every dashboard query against it (Debian's package; run as a plain binary).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi
bash tests/controlplane/install-k8s.sh
wait $torch_install || { echo "install-deps: installing the torch environment failed" >&2; exit 1; }
wait $helm_install || { echo "install-deps: installing Helm's engine failed" >&2; exit 1; }
