#!/usr/bin/env bash
# Installs what the test control plane needs, idempotently:
#   etcd (Debian's etcd-server) and kube-apiserver, kube-scheduler, kube-controller-manager
#   built once from Debian bookworm's Kubernetes 1.20.2 source tree (which ships vendor/),
#   cached under ~/.cache/rlhf-operator/k8s-1.20.2/bin.
# Why the reflect2 swap: the vendored modern-go/reflect2 v1.0.1 crashes kube-apiserver when built
# with Go >= 1.18; Debian's packaged 1.0.2 sources fix it.
set -euo pipefail

CACHE="${RLHF_CACHE:-$HOME/.cache/rlhf-operator}"
BIN="$CACHE/k8s-1.20.2/bin"
WANT=(kube-apiserver kube-scheduler kube-controller-manager)

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

apt_install etcd-server openssl
have_all=1
for b in "${WANT[@]}"; do [ -x "$BIN/$b" ] || have_all=0; done
if [ $have_all = 1 ]; then echo "control plane binaries: cached in $BIN"; exit 0; fi

echo "control plane binaries: building Kubernetes 1.20.2 from Debian source (~5 min, once)"
apt_install golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev
SRCLIST=/etc/apt/sources.list.d/rlhf-operator-deb-src.sources
if [ ! -f "$SRCLIST" ]; then
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$SRCLIST" >/dev/null
  $SUDO apt-get update -qq
fi

WORK="$CACHE/k8s-src"
rm -rf "$WORK"; mkdir -p "$WORK"
(cd "$WORK" && apt-get source -qq --download-only kubernetes && dpkg-source -x --skip-patches kubernetes_*.dsc tree >/dev/null)
TREE="$WORK/tree"
rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
mkdir -p "$TREE/vendor/github.com/modern-go/reflect2"
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
   "$TREE/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
rm -f "$TREE"/vendor/github.com/modern-go/reflect2/*_test.go
mkdir -p "$TREE/.go/src/k8s.io"
ln -sfn "$TREE" "$TREE/.go/src/k8s.io/kubernetes"
(cd "$TREE/.go/src/k8s.io/kubernetes" && GOPATH="$TREE/.go" CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor \
   make WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager")
mkdir -p "$BIN"
for b in "${WANT[@]}"; do cp "$TREE/_output/bin/$b" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"; done
rm -rf "$WORK"
echo "control plane binaries: built into $BIN"
