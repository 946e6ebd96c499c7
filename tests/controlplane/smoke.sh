#!/usr/bin/env bash
# Smoke test of a control plane started by up.sh DIR: scheduler binds a GPU pod to a fake Node
# (and leaves an oversized one Pending), and the garbage collector follows ownerReferences.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
k() { kubectl --kubeconfig "$1/kubeconfig" "${@:2}"; }
D=$1
# Poll: the scheduler and the garbage collector act asynchronously.
until_ok() { for _ in $(seq 60); do eval "$1" && return 0; sleep 0.5; done; echo "smoke: FAILED: $1" >&2; exit 1; }

k "$D" get ns default >/dev/null
k "$D" create -f - >/dev/null <<'Y'
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "smoke-gpu-node"}}
Y
# No kubelet: play its part (status with GPUs and Ready; drop the not-ready taint).
k "$D" patch node smoke-gpu-node --subresource=status --type=merge -p '{"status":{
  "capacity":{"cpu":"8","memory":"32Gi","pods":"110","nvidia.com/gpu":"8"},
  "allocatable":{"cpu":"8","memory":"32Gi","pods":"110","nvidia.com/gpu":"8"},
  "conditions":[{"type":"Ready","status":"True","reason":"Smoke","message":"fake",
  "lastHeartbeatTime":"2025-01-01T00:00:00Z","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}' >/dev/null
until_ok 'k "$D" get node smoke-gpu-node -o jsonpath="{.spec.taints}" | grep -q not-ready'
k "$D" taint node smoke-gpu-node node.kubernetes.io/not-ready:NoSchedule- >/dev/null
for n in 4 6; do k "$D" create -f - >/dev/null <<Y
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "smoke-gpu$n"}, "spec": {"containers": [
 {"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "$n"}}}]}}
Y
done
until_ok '[ "$(k "$D" get pod smoke-gpu4 -o jsonpath={.spec.nodeName})" = smoke-gpu-node ]'
until_ok 'k "$D" get events --field-selector involvedObject.name=smoke-gpu6,reason=FailedScheduling -o name | grep -q .'
[ -z "$(k "$D" get pod smoke-gpu6 -o jsonpath={.spec.nodeName})" ]

k "$D" create configmap smoke-owner >/dev/null
uid=$(k "$D" get configmap smoke-owner -o jsonpath={.metadata.uid})
k "$D" create -f - >/dev/null <<Y
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smoke-dependent", "ownerReferences": [
 {"apiVersion": "v1", "kind": "ConfigMap", "name": "smoke-owner", "uid": "$uid"}]}}
Y
k "$D" delete configmap smoke-owner >/dev/null
until_ok '! k "$D" get configmap smoke-dependent >/dev/null 2>&1'

# Bound pods would stay Terminating forever without a kubelet to confirm; force them.
k "$D" delete pod smoke-gpu4 smoke-gpu6 --grace-period=0 --force >/dev/null 2>&1
k "$D" delete node smoke-gpu-node >/dev/null
echo "smoke: ok ($D)"
