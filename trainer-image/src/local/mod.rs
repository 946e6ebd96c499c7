//! `rlhf-trainer local JOB.yaml`: every stage of an RLHFJob manifest, in dependency order, on
//! this machine, each stage writing `<run>/<stage>/` as a pod writes its stage folder. Each stage
//! is one `rlhf-trainer run` process, launching `nodes x gpusPerNode` workers (Gloo over
//! loopback), so every parallelism strategy can be tried without a cluster. Each run
//! gets a fresh folder (`--output`, or the first free `rlhf-output/<job>-<n>`); `--resume RUN`
//! continues one: finished stages are skipped, an interrupted one resumes from its newest
//! checkpoint. Relative paths in the manifest are relative to the manifest's folder. The run ends
//! with one JSON line: each stage's first and last held-out evaluation.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rlhf_spec::{
    BaseWeights, ResolvedDataset, ResolvedPipeline, ResolvedTokenizer, TrainerConfig,
    WeightsSource, resolve_pipeline,
};
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::curves;
use crate::distributed::launch;
use crate::error::{Error, Result};
use crate::progress::{METRICS_LOG, read_log};
use crate::record::{Evaluation, Record};
use crate::stage_runner;

const NAMESPACE: &str = "local";
/// The manifest as the run started, kept in the run folder.
const MANIFEST_COPY: &str = "job.yaml";
/// The stage's trainer config, as the operator would put it in the pod.
const CONFIG_FILE: &str = "trainer.json";

/// Where a run writes.
pub enum RunFolder {
    /// A new run: this folder, or the first free `rlhf-output/<job>-<n>` when None.
    Fresh(Option<PathBuf>),
    /// Continue the run in this folder.
    Resume(PathBuf),
}

pub fn run(manifest: &Path, folder: RunFolder) -> Result<()> {
    let text = std::fs::read_to_string(manifest).map_err(|source| Error::Read {
        path: manifest.into(),
        source,
    })?;
    let (job, pipeline) = parse(manifest, &text)?;
    let run_dir = prepare(&folder, &job, &text)?;
    println!(
        "{job}: {} stages, run folder {}",
        pipeline.order.len(),
        run_dir.display()
    );
    let outputs: BTreeMap<String, String> = pipeline
        .stages
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                run_dir.join(&s.name).to_string_lossy().into_owned(),
            )
        })
        .collect();
    for name in &pipeline.order {
        let stage = pipeline
            .stage(name)
            .expect("the order names resolved stages")
            .clone();
        let config = TrainerConfig {
            job: job.clone(),
            namespace: NAMESPACE.into(),
            model: pipeline.model.clone(),
            output_dir: outputs[name].clone(),
            stage_outputs: outputs.clone(),
            metrics_port: 0,
            stage,
        };
        if Path::new(&config.output_dir)
            .join(stage_runner::MODEL_DIR)
            .join("config.json")
            .exists()
        {
            println!("{name}: already done ({}), skipped", config.output_dir);
            continue;
        }
        println!(
            "{name}: running ({}, {} process(es))",
            config.output_dir,
            config.stage.parallelism.world_size()
        );
        run_stage(&config)?;
        let curves = Path::new(&config.output_dir).join(curves::CURVES_FILE);
        let curves = if curves.exists() {
            format!(", training curves in {}", curves.display())
        } else {
            String::new()
        };
        println!(
            "{name}: done, model in {}/{}{curves}",
            config.output_dir,
            stage_runner::MODEL_DIR
        );
    }
    let logs = pipeline
        .order
        .iter()
        .map(|n| (n.clone(), read_log(&run_dir.join(n).join(METRICS_LOG))))
        .collect();
    let summary = serde_json::to_string(&summary(&pipeline, &logs))
        .expect("summaries serialise: plain numbers and strings");
    println!("{summary}");
    Ok(())
}

/// Runs one stage as `rlhf-trainer run` with its config in the stage folder and torchrun's
/// variables for one machine; a failed stage fails the run with its exit code.
fn run_stage(config: &TrainerConfig) -> Result<()> {
    let dir = Path::new(&config.output_dir);
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let path = dir.join(CONFIG_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(config).expect("configs serialise"),
    )
    .map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    let world = config.stage.parallelism.world_size().to_string();
    let exe = std::env::current_exe().map_err(|source| Error::Read {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let status = Command::new(exe)
        .args(["run", "--config"])
        .arg(&path)
        .env("WORLD_SIZE", &world)
        .env("LOCAL_WORLD_SIZE", &world)
        .env("NODE_RANK", "0")
        .env("NNODES", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port()?.to_string())
        .env_remove("RANK")
        .env_remove("LOCAL_RANK")
        .env_remove(launch::WORKER_ENV)
        .status()
        .map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    match launch::exit_code(status) {
        0 => Ok(()),
        code => Err(Error::Stage {
            stage: config.stage.name.clone(),
            code,
        }),
    }
}

/// A free TCP port on loopback for the stage's rendezvous.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Write {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Write {
            path: "127.0.0.1:0".into(),
            source,
        })
}

/// The job name and its resolved pipeline, paths anchored at the manifest's folder.
fn parse(manifest: &Path, text: &str) -> Result<(String, ResolvedPipeline)> {
    let doc: Value = serde_yaml::from_str(text)
        .map_err(|e| Error::invalid(manifest, format!("not YAML: {e}")))?;
    let job = doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| Error::invalid(manifest, "metadata.name is missing"))?
        .to_string();
    let spec = serde_json::from_value(doc["spec"].clone())
        .map_err(|e| Error::invalid(manifest, format!("spec: {e}")))?;
    let mut pipeline = resolve_pipeline(&spec, "spec").map_err(|errors| {
        Error::invalid(
            manifest,
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    anchor_paths(&mut pipeline, manifest.parent().unwrap_or(Path::new(".")));
    Ok((job, pipeline))
}

/// Makes every relative file path in the pipeline relative to `base` instead of the working folder.
pub fn anchor_paths(p: &mut ResolvedPipeline, base: &Path) {
    let anchor = |path: &mut String| {
        if Path::new(path.as_str()).is_relative() {
            *path = base.join(path.as_str()).to_string_lossy().into_owned();
        }
    };
    if let BaseWeights::Path(path) = &mut p.model.weights {
        anchor(path);
    }
    if let ResolvedTokenizer::Path(path) = &mut p.model.tokenizer {
        anchor(path);
    }
    for s in &mut p.stages {
        let ptx = s.rl.as_mut().and_then(|rl| rl.ptx_dataset.as_mut());
        for dataset in std::iter::once(&mut s.dataset).chain(ptx) {
            if let ResolvedDataset::File { path, .. } = dataset {
                anchor(path);
            }
        }
        for source in s.weight_sources_mut() {
            if let WeightsSource::Path(path) = source {
                anchor(path);
            }
        }
    }
}

/// Creates (fresh) or checks (resume) the run folder; returns it.
fn prepare(folder: &RunFolder, job: &str, manifest_text: &str) -> Result<PathBuf> {
    let dir = match folder {
        RunFolder::Resume(dir) => {
            if !dir.is_dir() {
                return Err(Error::invalid(dir, "no such run folder to resume"));
            }
            if std::fs::read_to_string(dir.join(MANIFEST_COPY))
                .is_ok_and(|old| old != manifest_text)
            {
                eprintln!(
                    "rlhf-trainer: the manifest differs from the one {} started with; continuing with the new one",
                    dir.display()
                );
            }
            return Ok(dir.clone());
        }
        RunFolder::Fresh(Some(dir)) => {
            if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
                return Err(Error::invalid(
                    dir,
                    "the output folder is not empty; pass --resume to continue that run",
                ));
            }
            dir.clone()
        }
        RunFolder::Fresh(None) => first_free(Path::new("rlhf-output"), job),
    };
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    let copy = dir.join(MANIFEST_COPY);
    std::fs::write(&copy, manifest_text).map_err(|source| Error::Write { path: copy, source })?;
    Ok(dir)
}

/// `<root>/<job>-<n>` for the smallest n >= 1 not taken.
fn first_free(root: &Path, job: &str) -> PathBuf {
    (1..)
        .map(|n| root.join(format!("{job}-{n}")))
        .find(|p| !p.exists())
        .expect("some number is free")
}

/// The run's last line: `{"stages": {name: {"kind", "first", "last"}}}`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub stages: BTreeMap<String, StageSummary>,
}

/// A stage's first and last held-out evaluation (null when it logged none).
#[derive(Debug, Serialize)]
pub struct StageSummary {
    pub kind: &'static str,
    pub first: Option<Evaluation>,
    pub last: Option<Evaluation>,
}

/// The summary of each stage's held-out evaluations in `logs`.
pub fn summary(p: &ResolvedPipeline, logs: &BTreeMap<String, Vec<Record>>) -> Summary {
    let stages = p
        .order
        .iter()
        .map(|name| {
            let evals: Vec<&Evaluation> = logs
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|r| r.eval.as_ref())
                .collect();
            let stage = StageSummary {
                kind: p.stage(name).map_or("", |s| s.kind.as_str()),
                first: evals.first().copied().cloned(),
                last: evals.last().copied().cloned(),
            };
            (name.clone(), stage)
        })
        .collect();
    Summary { stages }
}

#[cfg(test)]
mod tests;
