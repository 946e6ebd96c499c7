use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, PersistentVolumeClaimVolumeSource,
    Pod, PodSpec, Volume, VolumeMount,
};
use sha2::{Digest, Sha256};

use super::{colocation, config::trainer_config, meta, podgroup::batch_scheduler};
use crate::controller::validate::{ValidatedJob, ValidatedStage};
use crate::crd::GangMode;
use crate::names;

/// A stage's gang: one pod per node, each running `gpusPerNode` trainer processes.
#[derive(Clone, Debug, PartialEq)]
pub struct Gang {
    pub stage: String,
    pub pods: Vec<Pod>,
    /// Every pod carries it, so a running gang started from an older spec is recognisable.
    pub spec_hash: String,
}

pub fn gang(job: &ValidatedJob, stage: &str, generation: u32) -> Option<Gang> {
    let s = job.stage(stage)?;
    let mut pods: Vec<Pod> = (0..s.resolved.parallelism.nodes)
        .map(|rank| pod(job, s, rank, generation))
        .collect();
    let hash = spec_hash(job, stage, &pods);
    for p in &mut pods {
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(names::ANNOTATION_SPEC_HASH.to_string(), hash.clone());
    }
    Some(Gang {
        stage: stage.to_string(),
        pods,
        spec_hash: hash,
    })
}

/// Hash of everything a gang is started with (pod specs and trainer config).
fn spec_hash(job: &ValidatedJob, stage: &str, pods: &[Pod]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&trainer_config(job, stage)).unwrap_or_default());
    for p in pods {
        h.update(serde_json::to_vec(&p.spec).unwrap_or_default());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pod(job: &ValidatedJob, s: &ValidatedStage, rank: u32, generation: u32) -> Pod {
    let stage = s.resolved.name.as_str();
    let name = names::pod(&job.name, stage, rank);
    let mut volumes = vec![
        Volume {
            name: names::STORAGE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: job.claim.name().to_string(),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: names::CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&job.name, stage),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    volumes.extend(job.pod.volumes.iter().cloned());
    let mut mounts = vec![
        VolumeMount {
            name: names::STORAGE_VOLUME.into(),
            mount_path: job.mount_path.clone(),
            ..Default::default()
        },
        VolumeMount {
            name: names::CONFIG_VOLUME.into(),
            mount_path: names::CONFIG_MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    mounts.extend(job.pod.volume_mounts.iter().cloned());
    let gpus = s.resolved.parallelism.gpus_per_node;
    let ports = (0..gpus)
        .map(|r| ContainerPort {
            name: Some(format!("metrics-{r}")),
            container_port: (job.metrics_port as u32 + r) as i32,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let container = Container {
        name: names::CONTAINER.into(),
        image: Some(job.pod.image.clone()),
        image_pull_policy: Some(job.pod.pull_policy.clone()),
        command: Some(vec!["rlhf-trainer".into(), "run".into()]),
        env: Some(env(job, s, rank)),
        resources: Some(s.resources.clone()),
        volume_mounts: Some(mounts),
        ports: Some(ports),
        // The end of the log becomes the termination message, so a failed trainer's error
        // reaches the job's status.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let mut spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        hostname: Some(name.clone()),
        subdomain: Some(names::service(&job.name, stage)),
        service_account_name: job.pod.service_account.clone(),
        image_pull_secrets: (!job.pod.pull_secrets.is_empty())
            .then(|| job.pod.pull_secrets.clone()),
        node_selector: (!job.pod.node_selector.is_empty()).then(|| job.pod.node_selector.clone()),
        tolerations: (!job.pod.tolerations.is_empty()).then(|| job.pod.tolerations.clone()),
        affinity: colocation::pod_affinity(job),
        priority_class_name: job.pod.priority_class.clone(),
        volumes: Some(volumes),
        ..Default::default()
    };
    let mut metadata = meta(
        job,
        name,
        names::pod_labels(&job.name, stage, rank, generation),
    );
    if let Some(scheduler) = batch_scheduler(job.scheduling.gang) {
        spec.scheduler_name = Some(scheduler.scheduler_name.to_string());
        scheduler.mark_member(&mut metadata, &names::pod_group(&job.name, stage));
    }
    if job.scheduling.gang == GangMode::Native {
        // Admission counts these pods' GPUs as taken even before the scheduler binds them.
        metadata
            .labels
            .get_or_insert_default()
            .insert(names::LABEL_NATIVE_GANG.into(), "true".into());
    }
    Pod {
        metadata,
        spec: Some(spec),
        ..Default::default()
    }
}

/// torchrun's variables plus ours (docs/ARCHITECTURE.md#pod-environment); the trainer's launcher
/// adds RANK/LOCAL_RANK.
fn env(job: &ValidatedJob, s: &ValidatedStage, rank: u32) -> Vec<EnvVar> {
    let stage = s.resolved.name.as_str();
    let p = &s.resolved.parallelism;
    let master = format!(
        "{}.{}.{}.svc",
        names::pod(&job.name, stage, 0),
        names::service(&job.name, stage),
        job.namespace
    );
    let ours = [
        ("MASTER_ADDR", master),
        ("MASTER_PORT", names::MASTER_PORT.to_string()),
        ("NNODES", p.nodes.to_string()),
        ("NODE_RANK", rank.to_string()),
        ("LOCAL_WORLD_SIZE", p.gpus_per_node.to_string()),
        ("WORLD_SIZE", p.world_size().to_string()),
        (
            "RLHF_CONFIG",
            format!("{}/{}", names::CONFIG_MOUNT_PATH, names::CONFIG_FILE),
        ),
        ("RLHF_JOB", job.name.clone()),
        ("RLHF_STAGE", stage.to_string()),
        ("RLHF_NAMESPACE", job.namespace.clone()),
        ("RLHF_METRICS_PORT", job.metrics_port.to_string()),
    ];
    let mut env: Vec<EnvVar> = ours
        .into_iter()
        .map(|(k, v)| EnvVar {
            name: k.into(),
            value: Some(v),
            value_from: None,
        })
        .collect();
    env.extend(job.pod.env.iter().cloned());
    env
}
