#!/usr/bin/env bash
# Starts a real, throw-away Kubernetes 1.20 control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager) on free loopback ports, for integration tests and demos.
#   usage: up.sh DIR     then: source DIR/env   ...   down.sh DIR
# Everything (certs, etcd data, logs, pids, kubeconfig) lives in DIR, so several control planes
# can run side by side. There is no kubelet: pods stay Pending unless a test fakes a Node.
# Binaries: tests/controlplane/install-k8s.sh; override their folder with K8S_BIN.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "$0")" && pwd)"
K8S_BIN="${K8S_BIN:-${RLHF_CACHE:-$HOME/.cache/rlhf-operator}/k8s-1.20.2/bin}"
ETCD="${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
TIMEOUT="${CONTROLPLANE_TIMEOUT:-90}"
for b in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-scheduler" "$K8S_BIN/kube-controller-manager" "$ETCD"; do
  [ -x "$b" ] || { echo "up.sh: missing $b (run $HERE/install-k8s.sh)" >&2; exit 1; }
done

mkdir -p "$1"
DIR="$(cd "$1" && pwd -P)"   # absolute: down.sh matches it against each process's command line
# Refuse to wipe a folder that isn't ours; reuse one of ours only once it is down.
if [ -n "$(ls -A "$DIR")" ]; then
  [ -f "$DIR/.rlhf-controlplane" ] || { echo "up.sh: $DIR is not empty and not a control plane folder" >&2; exit 1; }
  "$HERE/down.sh" "$DIR" >/dev/null
  find "$DIR" -mindepth 1 -delete
fi
touch "$DIR/.rlhf-controlplane"
mkdir -p "$DIR/logs" "$DIR/pki"
: > "$DIR/pids"
START=$(date +%s)

# Hold all sockets open until every port is chosen so the three are distinct.
read -r ETCD_PORT PEER_PORT API_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')

# --- PKI. kube-rs (rustls) rejects a self-signed serving cert that is its own CA, hence CA + leaf.
P="$DIR/pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rlhf-test-ca" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$P/apiserver.key" -out "$P/apiserver.csr" 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
  > "$P/apiserver.ext"
openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
  -days 3650 -extfile "$P/apiserver.ext" -out "$P/apiserver.crt" 2>/dev/null
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
TOKEN="$(openssl rand -hex 32)"
echo "$TOKEN,admin,admin,system:masters" > "$P/tokens.csv"
chmod 600 "$P"/*.key "$P/tokens.csv"

cat > "$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$P/ca.crt")
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
chmod 600 "$DIR/kubeconfig"
echo "export KUBECONFIG=$DIR/kubeconfig" > "$DIR/env"
KC=(kubectl --kubeconfig "$DIR/kubeconfig" --request-timeout=5s)

# On any failure, stop what we started (logs stay for post-mortem).
trap 'rc=$?; [ $rc = 0 ] || "$HERE/down.sh" "$DIR" >/dev/null 2>&1 || true' EXIT

# setsid: own session, so the processes outlive this script and a Ctrl-C in the caller's terminal.
start() {
  local name=$1; shift
  setsid "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$DIR/pids"
}
die() { echo "up.sh: $*" >&2; exit 1; }
# Fails naming the log of the first recorded process that has exited.
check_alive() {
  local name pid
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$DIR/logs/$name.log" >&2
      die "$name exited during startup; see $DIR/logs/$name.log"; }
  done < "$DIR/pids"
}
wait_for() {  # wait_for WHAT COMMAND...
  local what=$1; shift
  until "$@" >/dev/null 2>&1; do
    check_alive
    [ $(( $(date +%s) - START )) -lt "$TIMEOUT" ] || die "timed out after ${TIMEOUT}s waiting for $what; logs in $DIR/logs/"
    sleep 0.5
  done
}

start etcd "$ETCD" --name default --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$PEER_PORT"
wait_for "etcd (logs/etcd.log)" curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --endpoint-reconciler-type=none: the `kubernetes` Service endpoint would be 127.0.0.1, which
# Endpoints validation rejects (loopback) and nothing in-cluster could reach anyway.
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
  --endpoint-reconciler-type none \
  --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --client-ca-file "$P/ca.crt" --token-auth-file "$P/tokens.csv" \
  --authorization-mode RBAC --allow-privileged=true \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.96.0.0/12 --cert-dir "$DIR/apiserver-certs"
wait_for "kube-apiserver /readyz (logs/kube-apiserver.log)" "${KC[@]}" get --raw /readyz

# --port=0/--secure-port=0: no serving endpoints, so parallel control planes can't collide.
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$DIR/kubeconfig" \
  --leader-elect=false --port 0 --secure-port 0
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$DIR/kubeconfig" \
  --leader-elect=false --port 0 --secure-port 0 \
  --controllers garbagecollector,namespace,serviceaccount-token,serviceaccount,persistentvolume-binder,pvc-protection,pv-protection \
  --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt"
# The default SA with its token secret proves the controller-manager works; pods can't be admitted before.
wait_for "default/default service account token (logs/kube-controller-manager.log)" \
  bash -c '[ -n "$("$@" -n default get serviceaccount default -o jsonpath="{.secrets[0].name}")" ]' _ "${KC[@]}"
check_alive

echo "control plane ready: KUBECONFIG=$DIR/kubeconfig"
echo "(started in $(( $(date +%s) - START ))s)" >&2
