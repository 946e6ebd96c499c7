//! The kubelet's part, played through the API: fake GPU Nodes and pod status updates.
use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Registers a Ready Node with `gpus` allocatable `nvidia.com/gpu` and no not-ready taint, and
/// the well-known labels a kubelet sets (hostname, os, arch) besides `labels`.
pub async fn register_node(
    client: &Client,
    name: &str,
    gpus: u32,
    mut labels: BTreeMap<String, String>,
) -> Result<()> {
    for (key, value) in [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
    ] {
        labels
            .entry(key.to_string())
            .or_insert_with(|| value.to_string());
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": []}
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    mark_node_ready(&nodes, name, gpus).await?;
    // The node-lifecycle taint may be added after creation; drop it (the kubelet's job normally).
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await?;
    Ok(())
}

/// Heartbeat: allocatable resources and a fresh Ready condition.
pub async fn mark_node_ready(nodes: &Api<Node>, name: &str, gpus: u32) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let resources =
        json!({"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": gpus.to_string()});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "rlhf test node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// What a pod's trainer container is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodOutcome {
    Running,
    Succeeded,
    /// Terminated with this exit code.
    Failed(i32),
}

/// Writes the pod status a kubelet would write for `outcome`.
pub async fn set_pod(pods: &Api<Pod>, name: &str, outcome: PodOutcome) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (phase, state, ready) = match outcome {
        PodOutcome::Running => ("Running", json!({"running": {"startedAt": now}}), true),
        PodOutcome::Succeeded => (
            "Succeeded",
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}),
            false,
        ),
        PodOutcome::Failed(code) => (
            "Failed",
            json!({"terminated": {"exitCode": code, "reason": "Error", "startedAt": now, "finishedAt": now}}),
            false,
        ),
    };
    let status = json!({"status": {
        "phase": phase,
        "podIP": "10.244.0.10",
        "startTime": now,
        "containerStatuses": [{"name": "trainer", "image": "trainer", "imageID": "", "ready": ready, "restartCount": 0, "state": state}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}
