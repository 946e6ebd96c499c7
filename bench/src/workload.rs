//! The PPO benchmark workloads: random GPT-2s (actor, reference, critic and reward model, the
//! reward model after one `rm` step since PPO takes it from a stage), 64 prompts of 64 tokens
//! (+9 held out for the trainer's evaluation), 64 new tokens each (top-k 50, temperature 1),
//! rollout and train batch 8, 1 PPO epoch, 2 threads, run through `rlhf-trainer local`.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::json;

/// Words that are one GPT-2 token each with their leading space, so a prompt of 64 of them is
/// 64 tokens.
const WORDS: [&str; 16] = [
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " was", " with",
    " be", " by", " on", " not",
];
pub const PROMPT_TOKENS: usize = 64;
/// 64 trained + 9 held out (the trainer holds out an eighth for its evaluation).
pub const PROMPTS: usize = 73;
pub const THREADS: &str = "2";
/// Samples per round: the rollout batch, learned from once (1 PPO epoch).
pub const ROLLOUT: f64 = 8.0;

/// A GPT-2 shape.
pub struct Model {
    pub name: &'static str,
    pub hidden: u32,
    pub layers: u32,
    pub heads: u32,
    pub context: u32,
}

/// The cpu-s workload: 4 layers, 4 heads, hidden 256, context 512.
pub const CPU_S: Model = Model {
    name: "cpu-s",
    hidden: 256,
    layers: 4,
    heads: 4,
    context: 512,
};
/// GPT-2 124M: 12 layers, 12 heads, hidden 768, context 1024.
pub const GPT2_124M: Model = Model {
    name: "gpt2-124m",
    hidden: 768,
    layers: 12,
    heads: 12,
    context: 1024,
};

/// The RLHFJob of `model` with `parallelism` (a YAML flow mapping), micro-batches of `micro`,
/// and at most `max_rounds` PPO rounds.
pub fn manifest(
    model: &Model,
    prompts: &Path,
    parallelism: &str,
    micro: u32,
    max_rounds: Option<u32>,
) -> String {
    let max_steps = max_rounds
        .map(|n| format!(", maxSteps: {n}"))
        .unwrap_or_default();
    format!(
        "apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {{name: {name}}}\nspec:\n  image: unused\n  model:\n    family: gpt2\n    init: random\n    \
         architecture: {{vocabSize: 50257, hiddenSize: {hidden}, numLayers: {layers}, numHeads: {heads}, maxPositions: {context}}}\n  \
         parallelism: {parallelism}\n  stages:\n    \
         - {{name: rm, kind: rm, dataset: {{synthetic: {{task: copy, samples: 32}}}}, training: {{batchSize: 8, microBatchSize: {micro}, maxSteps: 1, maxLength: 64}}}}\n    \
         - name: ppo\n      kind: ppo\n      dependsOn: [rm]\n      \
         dataset: {{path: {prompts}}}\n      models: {{rewardModel: {{stage: rm}}}}\n      \
         training: {{batchSize: 8, microBatchSize: {micro}, epochs: 1, maxLength: {context}, checkpointEvery: 1000{max_steps}}}\n      \
         rl: {{rolloutBatchSize: 8, updateEpochs: 1, generation: {{maxNewTokens: 64, temperature: 1.0, topK: 50}}}}\n",
        name = model.name,
        hidden = model.hidden,
        layers = model.layers,
        heads = model.heads,
        context = model.context,
        prompts = prompts.display(),
    )
}

/// 73 prompts of 64 single-token words, from a fixed seed.
pub fn prompts() -> String {
    let mut state = 12345u64;
    (0..PROMPTS)
        .map(|_| {
            let text: String = (0..PROMPT_TOKENS)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407); // Knuth's LCG
                    WORDS[(state >> 33) as usize % WORDS.len()]
                })
                .collect();
            format!("{}\n", json!({"prompt": text}))
        })
        .collect()
}

/// Runs `manifest` in a fresh `work` folder with `trainer`; returns the PPO stage's records.
pub fn run(
    trainer: &Path,
    work: &Path,
    manifest: impl FnOnce(&Path) -> String,
) -> Result<Vec<Record>> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let work = work.canonicalize()?;
    let trainer = trainer
        .canonicalize()
        .with_context(|| format!("{} (run `make build`)", trainer.display()))?;
    std::fs::write(work.join("prompts.jsonl"), prompts())?;
    std::fs::write(work.join("job.yaml"), manifest(&work.join("prompts.jsonl")))?;
    let status = Command::new(&trainer)
        .args(["local", "job.yaml", "--output", "run"])
        .current_dir(&work)
        .env("OMP_NUM_THREADS", THREADS)
        .env("MKL_NUM_THREADS", THREADS)
        .status()
        .with_context(|| format!("running {}", trainer.display()))?;
    if !status.success() {
        bail!("rlhf-trainer failed in {}: {status}", work.display());
    }
    let log = std::fs::read_to_string(work.join("run/ppo/metrics.jsonl"))?;
    Ok(log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// What the benchmarks read of a line of the trainer's metrics log (its own type is
/// `rlhf_trainer::record::Record`; this crate does not build the trainer).
#[derive(Debug, Deserialize)]
pub struct Record {
    /// A PPO round's phases (held-out evaluations have none).
    #[serde(default)]
    pub phases: Option<Phases>,
    /// Bytes by device (`cpu`, `cuda:<i>`).
    #[serde(default)]
    pub memory: BTreeMap<String, DeviceMemory>,
}

#[derive(Debug, Deserialize)]
pub struct Phases {
    pub experience: Option<Rates>,
    pub learn: Option<Rates>,
    pub train: Option<Rates>,
}

#[derive(Debug, Deserialize)]
pub struct Rates {
    pub samples_per_second: f64,
    pub tflops: f64,
}

#[derive(Debug, Deserialize)]
pub struct DeviceMemory {
    pub peak: Option<f64>,
}

/// The highest peak RSS (VmHWM, MiB) in the records.
pub fn peak_rss_mib(records: &[Record]) -> f64 {
    records
        .iter()
        .filter_map(|r| r.memory.get("cpu")?.peak)
        .fold(0.0, f64::max)
        / f64::from(1 << 20)
}

/// Today, as the results' file names carry it.
pub fn today() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%d")
        .to_string()
}
