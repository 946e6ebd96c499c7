//! (pure) RLHFJob -> ValidatedJob with every default filled in, or the reasons it is invalid.
//! Only checks the OpenAPI schema cannot express; the schema rejects the rest at `kubectl apply`.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use rlhf_spec::{FieldError, PipelineSpec, ResolvedPipeline, ResolvedStage, resolve_pipeline};

use crate::crd::{AccessMode, CleanPodPolicy, GangMode, RLHFJob, RLHFJobSpec};
use crate::names;

pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
pub const DEFAULT_MOUNT_PATH: &str = "/rlhf";
pub const DEFAULT_METRICS_PORT: u16 = 9400;
pub const DEFAULT_BACKOFF_LIMIT: u32 = 3;
pub const DEFAULT_GANG_TIMEOUT_SECONDS: u32 = 600;

/// Where the job's storage volume comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// A PVC the user made.
    Existing(String),
    /// A PVC the operator creates, owned by the job.
    Owned {
        name: String,
        size: Quantity,
        storage_class: Option<String>,
        access_modes: Vec<AccessMode>,
    },
}

impl Claim {
    pub fn name(&self) -> &str {
        match self {
            Claim::Existing(name) | Claim::Owned { name, .. } => name,
        }
    }
}

/// Pod settings shared by every stage.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodSettings {
    pub image: String,
    pub pull_policy: String,
    pub pull_secrets: Vec<LocalObjectReference>,
    pub service_account: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub priority_class: Option<String>,
    pub volumes: Vec<Volume>,
    pub volume_mounts: Vec<VolumeMount>,
    pub env: Vec<EnvVar>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedStage {
    pub resolved: ResolvedStage,
    /// The container's resources with `nvidia.com/gpu` = gpusPerNode in requests and limits.
    pub resources: ResourceRequirements,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunPolicyPlan {
    pub backoff_limit: u32,
    pub active_deadline_seconds: Option<u64>,
    pub ttl_seconds_after_finished: Option<u64>,
    pub suspend: bool,
    pub clean_pod_policy: CleanPodPolicy,
    pub progress_deadline_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SchedulingPlan {
    pub gang: GangMode,
    pub queue: Option<String>,
    pub timeout_seconds: u32,
}

/// The only input of the build steps: a job whose spec passed every check, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedJob {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub pipeline: ResolvedPipeline,
    /// In spec order.
    pub stages: Vec<ValidatedStage>,
    pub pod: PodSettings,
    pub claim: Claim,
    pub mount_path: String,
    pub scheduling: SchedulingPlan,
    pub run_policy: RunPolicyPlan,
    pub metrics_port: u16,
}

impl ValidatedJob {
    pub fn stage(&self, name: &str) -> Option<&ValidatedStage> {
        self.stages.iter().find(|s| s.resolved.name == name)
    }
}

/// Environment variables the operator sets; user `env` may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NODE_RANK",
    "NNODES",
    "LOCAL_WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "RLHF_CONFIG",
    "RLHF_JOB",
    "RLHF_STAGE",
    "RLHF_NAMESPACE",
    "RLHF_METRICS_PORT",
];

pub fn validate(job: &RLHFJob) -> Result<ValidatedJob, Vec<FieldError>> {
    let spec = &job.spec;
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let pipeline_spec = PipelineSpec {
        model: spec.model.clone(),
        stages: spec.stages.iter().map(|s| s.stage.clone()).collect(),
        parallelism: spec.parallelism.clone(),
    };
    let mut errors = Vec::new();
    let pipeline = resolve_pipeline(&pipeline_spec, "spec")
        .map_err(|e| errors.extend(e))
        .ok();
    check_names(&name, spec, &mut errors);
    let (claim, mount_path) = resolve_storage(&name, spec, &mut errors);
    let scheduling = resolve_scheduling(spec, &mut errors);
    let pod = pod_settings(spec, &mount_path, &mut errors);
    let metrics_port = spec
        .metrics
        .as_ref()
        .and_then(|m| m.port)
        .unwrap_or(DEFAULT_METRICS_PORT);
    let stages = pipeline
        .as_ref()
        .map(|p| {
            let stages: Vec<ValidatedStage> = p
                .stages
                .iter()
                .zip(&spec.stages)
                .enumerate()
                .filter_map(|(i, (resolved, js))| {
                    let at = format!("spec.stages[{i}]");
                    check_stage_fits(resolved, &claim, metrics_port, &at, &mut errors);
                    let resources = stage_resources(
                        spec,
                        js.resources.as_ref(),
                        resolved.parallelism.gpus_per_node,
                        &at,
                        &mut errors,
                    )?;
                    Some(ValidatedStage {
                        resolved: resolved.clone(),
                        resources,
                    })
                })
                .collect();
            stages
        })
        .unwrap_or_default();
    dedup_keep_order(&mut errors); // a job-level problem inherited by several stages is said once
    match (pipeline, claim, errors.is_empty()) {
        (Some(pipeline), Some(claim), true) => Ok(ValidatedJob {
            name,
            namespace,
            uid: job.uid().unwrap_or_default(),
            pipeline,
            stages,
            pod,
            claim,
            mount_path,
            scheduling,
            run_policy: resolve_run_policy(spec),
            metrics_port,
        }),
        _ => Err(errors),
    }
}

fn dedup_keep_order(errors: &mut Vec<FieldError>) {
    let mut seen = std::collections::BTreeSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
}

/// Pod hostnames and Service names are DNS labels built from the job and stage names.
fn check_names(job: &str, spec: &RLHFJobSpec, errors: &mut Vec<FieldError>) {
    if !job.starts_with(|c: char| c.is_ascii_lowercase()) {
        errors.push(FieldError::new(
            "metadata.name",
            format!("{job:?} must start with a lowercase letter (it prefixes Service names)"),
        ));
    }
    if job.contains('.') {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "{job:?} must not contain '.' (pod hostnames and Service names are DNS labels)"
            ),
        ));
    }
    for (i, s) in spec.stages.iter().enumerate() {
        let nodes = s
            .stage
            .parallelism
            .as_ref()
            .and_then(|p| p.nodes)
            .or(spec.parallelism.as_ref().and_then(|p| p.nodes))
            .unwrap_or(1);
        let longest = names::pod(job, &s.stage.name, nodes.saturating_sub(1));
        if longest.len() > 63 {
            errors.push(FieldError::new(
                format!("spec.stages[{i}].name"),
                format!(
                    "pod name {longest:?} would exceed 63 characters; shorten the job or stage name"
                ),
            ));
        }
    }
}

fn resolve_storage(
    job: &str,
    spec: &RLHFJobSpec,
    errors: &mut Vec<FieldError>,
) -> (Option<Claim>, String) {
    let s = spec.storage.clone().unwrap_or_default();
    let mount_path = s
        .mount_path
        .clone()
        .unwrap_or_else(|| DEFAULT_MOUNT_PATH.to_string())
        .trim_end_matches('/')
        .to_string();
    if mount_path.is_empty() || mount_path == names::CONFIG_MOUNT_PATH {
        errors.push(FieldError::new(
            "spec.storage.mountPath",
            format!(
                "{:?} is not usable: choose a folder other than / and {}",
                s.mount_path.clone().unwrap_or_default(),
                names::CONFIG_MOUNT_PATH
            ),
        ));
    }
    let claim = match s.claim_name {
        Some(claim) => {
            if s.size.is_some() || s.storage_class_name.is_some() || s.access_modes.is_some() {
                errors.push(FieldError::new(
                    "spec.storage.claimName",
                    "an existing claim cannot be combined with size, storageClassName or accessModes",
                ));
            }
            Some(Claim::Existing(claim))
        }
        None => Some(Claim::Owned {
            name: names::storage_claim(job),
            size: s
                .size
                .unwrap_or_else(|| Quantity(DEFAULT_STORAGE_SIZE.into())),
            storage_class: s.storage_class_name,
            access_modes: s
                .access_modes
                .unwrap_or_else(|| vec![AccessMode::ReadWriteOnce]),
        }),
    };
    (claim, mount_path)
}

fn resolve_scheduling(spec: &RLHFJobSpec, errors: &mut Vec<FieldError>) -> SchedulingPlan {
    let s = spec.scheduling.clone().unwrap_or_default();
    let gang = s.gang.unwrap_or_default();
    if s.queue.is_some() && gang != GangMode::Volcano {
        errors.push(FieldError::new(
            "spec.scheduling.queue",
            "a queue only applies to gang: volcano",
        ));
    }
    SchedulingPlan {
        gang,
        queue: s.queue,
        timeout_seconds: s.timeout_seconds.unwrap_or(DEFAULT_GANG_TIMEOUT_SECONDS),
    }
}

fn resolve_run_policy(spec: &RLHFJobSpec) -> RunPolicyPlan {
    let r = spec.run_policy.clone().unwrap_or_default();
    RunPolicyPlan {
        backoff_limit: r.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT),
        active_deadline_seconds: r.active_deadline_seconds,
        ttl_seconds_after_finished: r.ttl_seconds_after_finished,
        suspend: r.suspend.unwrap_or(false),
        clean_pod_policy: r.clean_pod_policy.unwrap_or_default(),
        progress_deadline_seconds: r.progress_deadline_seconds,
    }
}

fn pod_settings(spec: &RLHFJobSpec, mount_path: &str, errors: &mut Vec<FieldError>) -> PodSettings {
    let env = spec.env.clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if RESERVED_ENV.contains(&e.name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.env[{i}].name"),
                format!("{} is set by the operator", e.name),
            ));
        }
    }
    let volumes = spec.volumes.clone().unwrap_or_default();
    for (i, v) in volumes.iter().enumerate() {
        if names::RESERVED_VOLUMES.contains(&v.name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.volumes[{i}].name"),
                format!("{:?} is reserved by the operator", v.name),
            ));
        }
    }
    let mounts = spec.volume_mounts.clone().unwrap_or_default();
    for (i, m) in mounts.iter().enumerate() {
        if !volumes.iter().any(|v| v.name == m.name) {
            errors.push(FieldError::new(
                format!("spec.volumeMounts[{i}].name"),
                format!("no volume named {:?} in spec.volumes", m.name),
            ));
        }
        for taken in [mount_path, names::CONFIG_MOUNT_PATH] {
            if m.mount_path.trim_end_matches('/') == taken {
                errors.push(FieldError::new(
                    format!("spec.volumeMounts[{i}].mountPath"),
                    format!("{taken} is used by the operator"),
                ));
            }
        }
    }
    PodSettings {
        image: spec.image.clone(),
        pull_policy: spec
            .image_pull_policy
            .map(|p| p.as_str())
            .unwrap_or("IfNotPresent")
            .to_string(),
        pull_secrets: spec.image_pull_secrets.clone().unwrap_or_default(),
        service_account: spec.service_account_name.clone(),
        node_selector: spec.node_selector.clone().unwrap_or_default(),
        tolerations: spec.tolerations.clone().unwrap_or_default(),
        affinity: spec.affinity.clone(),
        priority_class: spec.priority_class_name.clone(),
        volumes,
        volume_mounts: mounts,
        env,
    }
}

fn check_stage_fits(
    stage: &ResolvedStage,
    claim: &Option<Claim>,
    metrics_port: u16,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let p = &stage.parallelism;
    if metrics_port as u32 + p.gpus_per_node - 1 > u16::MAX as u32 {
        errors.push(FieldError::new(
            "spec.metrics.port",
            format!(
                "port + gpusPerNode - 1 exceeds 65535 for stage {:?}",
                stage.name
            ),
        ));
    }
    if let Some(Claim::Owned { access_modes, .. }) = claim
        && p.nodes > 1
        && !access_modes.contains(&AccessMode::ReadWriteMany)
    {
        errors.push(FieldError::new(
            format!("{at}.parallelism.nodes"),
            format!(
                "{} pods on different nodes cannot share a ReadWriteOnce volume; set spec.storage.accessModes [ReadWriteMany] or spec.storage.claimName",
                p.nodes
            ),
        ));
    }
}

/// The stage's container resources: the stage override or the job's, with the GPU count set.
fn stage_resources(
    spec: &RLHFJobSpec,
    stage_override: Option<&ResourceRequirements>,
    gpus: u32,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResourceRequirements> {
    let (mut res, field) = match stage_override {
        Some(r) => (r.clone(), format!("{at}.resources")),
        None => (
            spec.resources.clone().unwrap_or_default(),
            "spec.resources".to_string(),
        ),
    };
    let want = Quantity(gpus.to_string());
    let mut ok = true;
    for (part, map) in [("limits", &mut res.limits), ("requests", &mut res.requests)] {
        let map = map.get_or_insert_with(BTreeMap::new);
        if let Some(given) = map.get(GPU_RESOURCE)
            && given != &want
        {
            errors.push(FieldError::new(
                format!("{field}.{part}[{GPU_RESOURCE}]"),
                format!(
                    "{} disagrees with gpusPerNode {gpus}; leave it out, the operator sets it",
                    given.0
                ),
            ));
            ok = false;
        }
        map.insert(GPU_RESOURCE.to_string(), want.clone());
    }
    ok.then_some(res)
}

#[cfg(test)]
mod tests;
