//! `rlhf-trainer local JOB.yaml`: every stage of an RLHFJob manifest, in dependency order, on
//! this machine, writing `<output>/local/<job>/<stage>/` as the operator's pods would. A stage
//! whose final model already exists is skipped, so a rerun continues where the last one stopped.
use std::collections::BTreeMap;
use std::path::Path;

use rlhf_spec::{PipelineSpec, TrainerConfig, resolve_pipeline, stage_output_dir};
use tch::Device;

use crate::error::{Error, Result};
use crate::stage;

const NAMESPACE: &str = "local";

pub fn run(manifest: &Path, output: &Path, device: Device) -> Result<()> {
    let text = std::fs::read_to_string(manifest).map_err(|source| Error::Read { path: manifest.into(), source })?;
    let doc: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| Error::invalid(manifest, format!("not YAML: {e}")))?;
    let job = doc["metadata"]["name"].as_str().ok_or_else(|| Error::invalid(manifest, "metadata.name is missing"))?.to_string();
    let spec: PipelineSpec = serde_json::from_value(doc["spec"].clone()).map_err(|e| Error::invalid(manifest, format!("spec: {e}")))?;
    let pipeline = resolve_pipeline(&spec, "spec").map_err(|errors| {
        Error::invalid(manifest, errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
    })?;
    let root = output.to_string_lossy();
    let outputs: BTreeMap<String, String> =
        pipeline.stages.iter().map(|s| (s.name.clone(), stage_output_dir(&root, NAMESPACE, &job, &s.name))).collect();
    for name in &pipeline.order {
        let stage = pipeline.stage(name).expect("the order names resolved stages").clone();
        let world = stage.parallelism.world_size();
        if world > 1 {
            return Err(Error::invalid(manifest, format!("stage {name} asks for {world} processes; multi-process training is not available yet")));
        }
        let config = TrainerConfig {
            job: job.clone(),
            namespace: NAMESPACE.into(),
            model: pipeline.model.clone(),
            output_dir: outputs[name].clone(),
            stage_outputs: outputs.clone(),
            metrics_port: 0,
            stage,
        };
        if Path::new(&config.output_dir).join(stage::MODEL_DIR).join("config.json").exists() {
            println!("{name}: already done ({}), skipped", config.output_dir);
            continue;
        }
        println!("{name}: running ({})", config.output_dir);
        stage::run(&config, device)?;
        println!("{name}: done, model in {}/{}", config.output_dir, stage::MODEL_DIR);
    }
    Ok(())
}
