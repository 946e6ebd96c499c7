//! What native gang admission reads from the cluster: Nodes (readiness, taints, allocatable
//! `nvidia.com/gpu`), the GPUs that unfinished pods request, and the other jobs' queued gangs.
//! The decision itself is the pure `admission::admit`.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::admission::{GangRequest, NodeCapacity, reserve_unbound};
use super::build;
use super::validate::{GPU_RESOURCE, ValidatedJob, validate};
use crate::crd::{RLHFJob, StagePhase};
use crate::error::Result;
use crate::names;

/// Whether the node's Ready condition is True (what a gang on it depends on).
pub fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Node as admission sees it (a cordoned node takes no new gang).
pub fn node_capacity(node: &Node) -> NodeCapacity {
    let status = node.status.as_ref();
    let ready = node_ready(node);
    let gpus = status
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(GPU_RESOURCE))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0);
    let spec = node.spec.as_ref();
    NodeCapacity {
        name: node.name_any(),
        labels: node.labels().clone(),
        taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
        ready: ready && !spec.and_then(|s| s.unschedulable).unwrap_or(false),
        gpus,
        gpus_in_use: 0,
        colocated_jobs: Default::default(),
    }
}

/// GPUs a pod's containers request (limits stand in for missing requests, as Kubernetes does
/// for extended resources).
pub fn pod_gpus(pod: &Pod) -> u32 {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .filter_map(|r| {
            r.requests
                .as_ref()
                .and_then(|q| q.get(GPU_RESOURCE))
                .or_else(|| r.limits.as_ref().and_then(|q| q.get(GPU_RESOURCE)))
        })
        .filter_map(|q| q.0.parse::<u32>().ok())
        .sum()
}

fn is_unfinished(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Every Node, with the GPUs that unfinished pods use on it: bound pods where they are, and the
/// unbound pods of gangs we admitted where they would most likely go (other unbound pods are
/// not counted: they may never fit, and must not block every gang).
pub async fn nodes_with_usage(client: &Client) -> Result<Vec<NodeCapacity>> {
    let mut nodes: Vec<NodeCapacity> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .iter()
        .map(node_capacity)
        .collect();
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut unbound = Vec::new();
    for pod in pods.iter().filter(|p| is_unfinished(p)) {
        let gpus = pod_gpus(pod);
        if gpus == 0 {
            continue;
        }
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(bound) => {
                if let Some(n) = nodes.iter_mut().find(|n| n.name == bound) {
                    n.gpus_in_use += gpus;
                    n.colocated_jobs.extend(build::colocated_job(pod));
                }
            }
            None if pod.labels().contains_key(names::LABEL_NATIVE_GANG) => {
                let spec = pod.spec.as_ref();
                unbound.push(GangRequest {
                    key: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                    priority: 0,
                    created: String::new(),
                    pods: 1,
                    gpus_per_pod: gpus,
                    node_selector: spec
                        .and_then(|s| s.node_selector.clone())
                        .unwrap_or_default(),
                    tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
                    colocate: build::colocated_job(pod),
                });
            }
            None => {}
        }
    }
    reserve_unbound(&mut nodes, &unbound);
    Ok(nodes)
}

/// A stage's gang as a queue entry.
pub fn gang_request(
    job: &ValidatedJob,
    stage: &str,
    priority: i32,
    created: &str,
) -> Option<GangRequest> {
    let s = job.stage(stage)?;
    Some(GangRequest {
        key: format!("{}/{}/{stage}", job.namespace, job.name),
        priority,
        created: created.to_string(),
        pods: s.resolved.parallelism.nodes,
        gpus_per_pod: s.resolved.parallelism.gpus_per_node,
        node_selector: job.pod.node_selector.clone(),
        tolerations: job.pod.tolerations.clone(),
        colocate: build::colocation_of(job),
    })
}

/// Priority values by PriorityClass name, and the global default's value.
pub struct Priorities {
    by_name: BTreeMap<String, i32>,
    default: i32,
}

impl Priorities {
    pub async fn read(client: &Client) -> Result<Self> {
        let classes = Api::<PriorityClass>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        let default = classes
            .iter()
            .find(|c| c.global_default == Some(true))
            .and_then(|c| c.value)
            .unwrap_or(0);
        Ok(Self {
            by_name: classes
                .iter()
                .map(|c| (c.name_any(), c.value.unwrap_or(0)))
                .collect(),
            default,
        })
    }

    pub fn of(&self, job: &ValidatedJob) -> i32 {
        job.pod
            .priority_class
            .as_ref()
            .and_then(|n| self.by_name.get(n).copied())
            .unwrap_or(self.default)
    }
}

/// The gangs of OTHER jobs that wait in the queue now (their status says Queued).
pub fn queued_elsewhere(
    jobs: &[RLHFJob],
    this: &ValidatedJob,
    priorities: &Priorities,
) -> Vec<GangRequest> {
    let mut queue = Vec::new();
    for other in jobs {
        let is_this = other.name_any() == this.name
            && other.namespace().as_deref() == Some(this.namespace.as_str());
        let queued: Vec<String> = other
            .status
            .iter()
            .flat_map(|s| s.stages.iter())
            .filter(|s| s.phase == StagePhase::Queued)
            .map(|s| s.name.clone())
            .collect();
        if is_this || queued.is_empty() || other.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Ok(valid) = validate(other) else { continue };
        let created = created_at(other);
        queue.extend(
            queued
                .iter()
                .filter_map(|stage| gang_request(&valid, stage, priorities.of(&valid), &created)),
        );
    }
    queue
}

/// The job's creation time as RFC 3339 text (sorts in time order).
pub fn created_at(job: &RLHFJob) -> String {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nodes_and_pods_are_read_as_kubernetes_means_them() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"pool": "a"}},
            "spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let n = node_capacity(&node);
        assert_eq!(
            (
                n.name.as_str(),
                n.gpus,
                n.ready,
                n.taints.len(),
                n.labels["pool"].as_str()
            ),
            ("n1", 8, true, 1, "a")
        );
        let cordoned: Node = serde_json::from_value(
            json!({"metadata": {"name": "n2"}, "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap();
        let c = node_capacity(&cordoned);
        assert_eq!(
            (c.gpus, c.ready, node_ready(&cordoned)),
            (0, false, true),
            "cordoned: ready, but takes no gang"
        );
        assert!(n.ready && node_ready(&node));

        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
            {"name": "c"}
        ]}}))
        .unwrap();
        assert_eq!(pod_gpus(&pod), 3);
    }
}
