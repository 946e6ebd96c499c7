use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use rlhf_spec::{TrainerConfig, WeightsSource, stage_output_dir};

use super::meta;
use crate::controller::validate::ValidatedJob;
use crate::names;

/// What the stage's trainer reads from `RLHF_CONFIG`.
pub fn trainer_config(job: &ValidatedJob, stage: &str) -> Option<TrainerConfig> {
    let s = job.stage(stage)?;
    let out = |name: &str| stage_output_dir(&job.mount_path, &job.namespace, &job.name, name);
    let stage_outputs = s
        .resolved
        .weight_sources()
        .into_iter()
        .filter_map(|w| match w {
            WeightsSource::Stage(name) => Some((name.clone(), out(name))),
            _ => None,
        })
        .collect();
    Some(TrainerConfig {
        job: job.name.clone(),
        namespace: job.namespace.clone(),
        model: job.pipeline.model.clone(),
        stage: s.resolved.clone(),
        output_dir: out(stage),
        stage_outputs,
        metrics_port: job.metrics_port,
    })
}

/// The stage's ConfigMap holding `trainer.json`.
pub fn config_map(job: &ValidatedJob, stage: &str) -> Option<ConfigMap> {
    let config = trainer_config(job, stage)?;
    let json = serde_json::to_string_pretty(&config).expect("trainer config always serializes");
    Some(ConfigMap {
        metadata: meta(
            job,
            names::config_map(&job.name, stage),
            names::stage_labels(&job.name, stage),
        ),
        data: Some(BTreeMap::from([(names::CONFIG_FILE.to_string(), json)])),
        ..Default::default()
    })
}
