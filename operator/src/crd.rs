//! The `RLHFJob` custom resource (`rlhf.dev/v1alpha1`). The pipeline half (model, stages,
//! parallelism) comes from `rlhf-spec`; this file adds what only Kubernetes needs.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use rlhf_spec::{ModelSpec, ParallelismSpec, StageKind, StageSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An RLHF pipeline (SFT, reward model, PPO, DPO stages) run as gangs of trainer pods.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rlhf.dev",
    version = "v1alpha1",
    kind = "RLHFJob",
    plural = "rlhfjobs",
    shortname = "rlhf",
    namespaced,
    status = "RLHFJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.lastStep"}"#,
    printcolumn = r#"{"name":"Reward","type":"number","jsonPath":".status.lastReward"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RLHFJobSpec {
    /// Trainer container image (it must contain `rlhf-trainer`).
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy. Default: IfNotPresent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Service account of the trainer pods. Default: the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The base model every stage starts from unless told otherwise.
    pub model: ModelSpec,
    /// The pipeline's stages; they run in dependency order (`dependsOn`).
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<JobStage>,
    /// Default parallelism of every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<ParallelismSpec>,
    /// Trainer container resources. `nvidia.com/gpu` is set from `gpusPerNode`; a different value here is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of every trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of every trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of every trainer pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of every trainer pod (it also orders the gang queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra pod volumes (datasets, models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Mounts of those volumes in the trainer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Extra environment of the trainer container (the operator's own variables cannot be overridden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Where stage outputs and checkpoints live. Default: a 10Gi ReadWriteOnce PVC the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Gang scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
    /// Restarts, deadlines, suspension and clean-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_policy: Option<RunPolicy>,
    /// Trainer metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
}

/// A pipeline stage plus the pod settings only it may override.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStage {
    #[serde(flatten)]
    pub stage: StageSpec,
    /// Overrides the job's `resources` for this stage's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteMany,
    ReadWriteOncePod,
}

/// Storage for stage outputs: an existing PVC (`claimName`), or one the operator creates and owns
/// (it outlives every gang and is deleted with the job).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Use this existing PVC; exclusive with size/storageClassName/accessModes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Size of the PVC the operator creates. Default: 10Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Storage class of the created PVC. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes of the created PVC. Default: [ReadWriteOnce]; multi-node stages need ReadWriteMany.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub access_modes: Option<Vec<AccessMode>>,
    /// Where the volume is mounted in trainer pods. Default: /rlhf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^:]*$"))]
    pub mount_path: Option<String>,
}

/// How a stage's pods are admitted together.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum GangMode {
    /// The operator admits a gang only when the whole gang fits.
    #[default]
    Native,
    /// A Volcano PodGroup.
    Volcano,
    /// A scheduler-plugins (coscheduling) PodGroup.
    Coscheduling,
    /// No gang admission.
    None,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Gang admission mode. Default: native.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangMode>,
    /// Volcano queue (volcano mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub queue: Option<String>,
    /// An admitted gang not fully Running within this time is torn down and requeued. Default: 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u32>,
}

/// What happens to pods when a stage or the job finishes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum CleanPodPolicy {
    /// Keep finished pods (they hold no resources) for their logs.
    #[default]
    None,
    /// Delete pods still running when the job finishes.
    Running,
    /// Delete every pod when its stage finishes.
    All,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Whole-gang restarts allowed per stage. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub backoff_limit: Option<u32>,
    /// Fail the job when it has run this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
    /// Delete the job this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Delete the pods and keep checkpoints; unsuspending continues from them. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Clean-up of finished pods. Default: None (keep them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// Restart the gang when a running stage's step has not advanced for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Port of local rank 0's Prometheus endpoint; local rank r serves on port + r. Default: 9400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: Option<u16>,
}

/// Phase of the whole job.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum JobPhase {
    #[default]
    Pending,
    Queued,
    Running,
    Restarting,
    Succeeded,
    Failed,
    Suspended,
}

/// Phase of one stage.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum StagePhase {
    /// Its dependencies have not all succeeded yet.
    #[default]
    Waiting,
    /// Its gang is admitted (or being created) but not all pods are Running yet.
    Pending,
    /// Its gang waits for GPUs (see `message` for its position and why).
    Queued,
    Running,
    /// Its gang is being torn down, or waits out the backoff before the next one starts.
    Restarting,
    Succeeded,
    Failed,
    /// The job is suspended: its pods are deleted, its checkpoints kept.
    Suspended,
}

impl StagePhase {
    pub fn is_finished(self) -> bool {
        matches!(self, StagePhase::Succeeded | StagePhase::Failed)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: String,
    pub kind: StageKind,
    pub phase: StagePhase,
    /// Whole-gang restarts so far.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reward: Option<f64>,
    /// The first mean reward the stage reported (PPO), to compare with `lastReward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_reward: Option<f64>,
    /// The stage's output folder on the job's storage volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Generation of the stage's current gang (its pods' `rlhf.dev/gang-generation` label); every
    /// restart, requeue or resume from suspension starts a new one.
    #[serde(default)]
    pub gang_generation: u32,
    /// When the current gang was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang_start_time: Option<Time>,
    /// Since when the stage's gang has been waiting in the queue (while Queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_since: Option<Time>,
    /// When the step last changed (the progress deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// A restarting stage's next gang starts no earlier than this (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
    /// Why the stage is queued, restarting or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RLHFJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// The stage(s) running now, comma-separated (the Stage column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Latest step reported by a running stage (the Step column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
    /// Latest mean reward reported by a running PPO stage (the Reward column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRD as installed. schemars writes `Option<enum>` as an enum listing `null`, which
/// Kubernetes rejects; `nullable: true` already says the same, so the `null` entries are dropped.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut value = serde_json::to_value(RLHFJob::crd()).expect("a CRD always serializes");
    drop_null_enum_values(&mut value);
    serde_json::from_value(value).expect("dropping enum entries keeps a valid CRD")
}

fn drop_null_enum_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

/// The CRD as YAML, exactly what `rlhf-operator crd` prints and `crds/rlhf.dev_rlhfjobs.yaml` holds.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&crd()).expect("a CRD always serializes");
    format!("# Generated by `rlhf-operator crd` from operator/src/crd.rs; do not edit.\n{yaml}")
}
