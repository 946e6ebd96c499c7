//! Names and labels of everything the operator creates (pure; one place so nothing drifts).
use std::collections::BTreeMap;

pub const FIELD_MANAGER: &str = "rlhf-operator";
pub const LABEL_JOB: &str = "rlhf.dev/job";
pub const LABEL_STAGE: &str = "rlhf.dev/stage";
pub const LABEL_RANK: &str = "rlhf.dev/node-rank";
pub const LABEL_GENERATION: &str = "rlhf.dev/gang-generation";
/// On pods of natively admitted gangs (their GPUs are reserved from creation on).
pub const LABEL_NATIVE_GANG: &str = "rlhf.dev/native-gang";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const ANNOTATION_SPEC_HASH: &str = "rlhf.dev/spec-hash";
/// The `coordination.k8s.io/v1` Lease the operator replicas elect their leader with.
pub const LEADER_LEASE: &str = "rlhf-operator-leader";

pub const STORAGE_VOLUME: &str = "rlhf-storage";
pub const CONFIG_VOLUME: &str = "rlhf-config";
pub const RESERVED_VOLUMES: &[&str] = &[STORAGE_VOLUME, CONFIG_VOLUME];
pub const CONFIG_MOUNT_PATH: &str = "/etc/rlhf";
pub const CONFIG_FILE: &str = "trainer.json";
pub const CONTAINER: &str = "trainer";
/// torchrun's default rendezvous port.
pub const MASTER_PORT: u16 = 29500;

/// Headless Service of a stage's gang.
pub fn service(job: &str, stage: &str) -> String {
    format!("{job}-{stage}")
}

/// Pod (and hostname) of one node rank of a stage's gang.
pub fn pod(job: &str, stage: &str, node_rank: u32) -> String {
    format!("{job}-{stage}-{node_rank}")
}

/// PodGroup of a stage's gang (gang: volcano or coscheduling).
pub fn pod_group(job: &str, stage: &str) -> String {
    format!("{job}-{stage}")
}

pub fn config_map(job: &str, stage: &str) -> String {
    format!("{job}-{stage}-config")
}

pub fn storage_claim(job: &str) -> String {
    format!("{job}-storage")
}

/// Labels every object of a job carries.
pub fn job_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_JOB.to_string(), job.to_string()),
        (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
    ])
}

pub fn stage_labels(job: &str, stage: &str) -> BTreeMap<String, String> {
    let mut labels = job_labels(job);
    labels.insert(LABEL_STAGE.to_string(), stage.to_string());
    labels
}

pub fn pod_labels(
    job: &str,
    stage: &str,
    node_rank: u32,
    generation: u32,
) -> BTreeMap<String, String> {
    let mut labels = stage_labels(job, stage);
    labels.insert(LABEL_RANK.to_string(), node_rank.to_string());
    labels.insert(LABEL_GENERATION.to_string(), generation.to_string());
    labels
}

/// Selects every object of a job.
pub fn job_selector(job: &str) -> String {
    format!("{LABEL_JOB}={job},{LABEL_MANAGED_BY}={FIELD_MANAGER}")
}
