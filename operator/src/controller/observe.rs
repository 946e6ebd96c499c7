//! (pure) What the operator reads back from the cluster, reduced to what decisions need.
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::names;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// One trainer pod of the job, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedPod {
    pub name: String,
    pub stage: String,
    pub node_rank: u32,
    pub generation: u32,
    pub phase: PodPhase,
    pub spec_hash: Option<String>,
    /// Exit code of the trainer container when it has terminated.
    pub exit_code: Option<i32>,
    /// The kubelet's reason (e.g. OOMKilled, Evicted) when there is one.
    pub reason: Option<String>,
    pub deleting: bool,
}

impl ObservedPod {
    /// None for pods that are not ours (missing labels).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let labels = pod.labels();
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Unknown") => PodPhase::Unknown,
            _ => PodPhase::Pending,
        };
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == names::CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        Some(Self {
            name: pod.name_any(),
            stage: labels.get(names::LABEL_STAGE)?.clone(),
            node_rank: labels.get(names::LABEL_RANK)?.parse().ok()?,
            generation: labels.get(names::LABEL_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0),
            phase,
            spec_hash: pod.annotations().get(names::ANNOTATION_SPEC_HASH).cloned(),
            exit_code: terminated.map(|t| t.exit_code),
            reason: terminated.and_then(|t| t.reason.clone()).or_else(|| status.and_then(|s| s.reason.clone())),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        })
    }

    /// "pod x failed (exit code 1, OOMKilled)"
    pub fn failure(&self) -> String {
        let mut why = Vec::new();
        if let Some(code) = self.exit_code {
            why.push(format!("exit code {code}"));
        }
        why.extend(self.reason.clone());
        if why.is_empty() { format!("pod {} failed", self.name) } else { format!("pod {} failed ({})", self.name, why.join(", ")) }
    }
}
