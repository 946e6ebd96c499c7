{{/*
The operator's permissions, exactly what its code calls (operator/src/controller/), no wildcards.
"rules.namespaced" covers the objects in the namespaces it watches; "rules.cluster" the
cluster-scoped reads that gang admission needs. Verbs: server-side apply is a PATCH (which
creates what is absent), so "create" and "patch" go together.
*/}}

{{- define "rlhf-operator.rules.namespaced" -}}
# RLHFJobs: the controller's watch (list/watch), reads of the job (get), the admission queue over
# every watched job (list), ttlSecondsAfterFinished deletes a finished job (delete), and
# server-side apply of the job's own fields (patch).
- apiGroups: ["rlhf.dev"]
  resources: ["rlhfjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# The job's status is written with server-side apply on the status subresource.
- apiGroups: ["rlhf.dev"]
  resources: ["rlhfjobs/status"]
  verbs: ["get", "patch"]
# Trainer pods: watched as owned objects, listed per job, created with server-side apply, deleted
# when a gang restarts, is suspended, times out or finishes (cleanPodPolicy).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Each stage's headless Service (MASTER_ADDR) and ConfigMap (trainer.json): watched as owned
# objects, applied, and deleted with a stage removed from the spec.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The job's storage claim: looked up, then created once with server-side apply (never deleted by
# the operator: the garbage collector removes it with the job).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
# Events for every phase transition (kube-rs' Recorder creates them and patches repeats).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# PodGroups of gangs run by Volcano (scheduling.gang: volcano), applied before the pods and
# deleted with a stage removed from the spec.
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch", "delete"]
# PodGroups of gangs run by scheduler-plugins' coscheduling (scheduling.gang: coscheduling).
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch", "delete"]
{{- end -}}

{{- define "rlhf-operator.rules.cluster" -}}
# Nodes: native gang admission reads their readiness, taints and allocatable GPUs; node changes
# wake queued jobs (watch); a running gang's node going NotReady restarts the gang (get).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- if .Values.watchNamespaces }}
# Pods in every namespace, read only: the GPUs already requested on each node (admission must
# count other workloads' pods, not only the watched namespaces').
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
# PriorityClasses: the admission queue is ordered by the jobs' priorityClassName values.
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["list"]
{{- end -}}

{{- define "rlhf-operator.rules.leaderElection" -}}
# The leader-election Lease: read it, create it once, renew or take it over (update).
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end -}}
