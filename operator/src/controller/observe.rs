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
    /// The container's termination message (the end of its log when it failed: the trainer's error).
    pub message: Option<String>,
    pub deleting: bool,
    /// The node the scheduler bound it to.
    pub node: Option<String>,
    /// Its IP once it runs (rank 0's metrics are scraped there).
    pub ip: Option<String>,
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
            generation: labels
                .get(names::LABEL_GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            phase,
            spec_hash: pod.annotations().get(names::ANNOTATION_SPEC_HASH).cloned(),
            exit_code: terminated.map(|t| t.exit_code),
            reason: terminated
                .and_then(|t| t.reason.clone())
                .or_else(|| status.and_then(|s| s.reason.clone())),
            message: terminated
                .and_then(|t| t.message.clone())
                .or_else(|| status.and_then(|s| s.message.clone())),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ip: status.and_then(|s| s.pod_ip.clone()),
        })
    }

    /// Whether the pod still runs or may run (it holds its GPUs).
    pub fn is_active(&self) -> bool {
        matches!(self.phase, PodPhase::Pending | PodPhase::Running)
    }

    /// "pod x failed (exit code 1, OOMKilled): <last line of its termination message>"
    pub fn failure(&self) -> String {
        let mut why = Vec::new();
        if let Some(code) = self.exit_code {
            why.push(format!("exit code {code}"));
        }
        why.extend(self.reason.clone());
        let mut text = if why.is_empty() {
            format!("pod {} failed", self.name)
        } else {
            format!("pod {} failed ({})", self.name, why.join(", "))
        };
        if let Some(last) = self.message.as_deref().and_then(last_line) {
            text.push_str(": ");
            text.push_str(last);
        }
        text
    }
}

/// The last non-empty line of a termination message (where a program's final error is).
fn last_line(message: &str) -> Option<&str> {
    message.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// What a stage's rank 0 reports on its `/metrics` (the Step and Reward columns come from it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainerProgress {
    pub step: u64,
    /// PPO only.
    pub reward_mean: Option<f64>,
}

/// The progress in a trainer's Prometheus text (`rlhf_trainer_step`, `rlhf_trainer_reward_mean`),
/// None when it reports no step yet. Lines of other metrics, comments and label sets are skipped.
pub fn trainer_progress(metrics_text: &str) -> Option<TrainerProgress> {
    let value = |name: &str| -> Option<f64> {
        metrics_text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == name)
                    .then(|| value.trim().parse::<f64>().ok())
                    .flatten()
            })
    };
    let step = value("rlhf_trainer_step").filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(TrainerProgress {
        step: step as u64,
        reward_mean: value("rlhf_trainer_reward_mean").filter(|r| r.is_finite()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_read_from_the_trainers_metrics() {
        let text = "# HELP rlhf_trainer_step Optimizer steps\n# TYPE rlhf_trainer_step gauge\n\
            rlhf_trainer_step{namespace=\"ml\",rank=\"0\",rlhf_job=\"demo\",stage=\"ppo\"} 42\n\
            rlhf_trainer_steps_total 7\n\
            rlhf_trainer_reward_mean{namespace=\"ml\",rank=\"0\",rlhf_job=\"demo\",stage=\"ppo\"} 1.25\n";
        assert_eq!(
            trainer_progress(text),
            Some(TrainerProgress {
                step: 42,
                reward_mean: Some(1.25)
            })
        );
        let sft = "rlhf_trainer_step{stage=\"sft\"} 3\nrlhf_trainer_loss{kind=\"train\"} 2.5\n";
        assert_eq!(
            trainer_progress(sft),
            Some(TrainerProgress {
                step: 3,
                reward_mean: None
            })
        );
        assert_eq!(trainer_progress("# nothing yet\n"), None);
        assert_eq!(trainer_progress("rlhf_trainer_step NaN\n"), None);
    }

    #[test]
    fn a_failure_names_the_pod_its_exit_and_the_trainers_last_words() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j-sft-0", "labels": {"rlhf.dev/stage": "sft", "rlhf.dev/node-rank": "0"}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Failed", "podIP": "10.1.2.3", "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": "loading stage sft\nerror: /data/missing.jsonl: no such file\n\n"}}}]}
        }))
        .unwrap();
        let observed = ObservedPod::from_pod(&pod).unwrap();
        assert_eq!(
            (observed.node.as_deref(), observed.ip.as_deref()),
            (Some("n1"), Some("10.1.2.3"))
        );
        assert_eq!(
            observed.failure(),
            "pod j-sft-0 failed (exit code 2, Error): error: /data/missing.jsonl: no such file"
        );
    }
}
