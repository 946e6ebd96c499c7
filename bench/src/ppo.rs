//! `rlhf-bench-ppo`: the cpu-s PPO workload through `rlhf-trainer local`. Actor, reference,
//! critic and reward model are random GPT-2s (the reward model after one `rm` step, since PPO
//! takes it from a stage) (4 layers, 4 heads, hidden 256, vocab 50257,
//! context 512); 64 prompts of 64 tokens; 64 new tokens each, top-k 50, temperature 1; rollout
//! and train batch 8; 1 PPO epoch; 2 threads. Reports experience, learning and overall samples/s
//! (from the trainer's per-round metrics log) and peak RSS, in bench/results/ppo-cpu-s-<date>.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rlhf_bench::machine;
use serde_json::{Value, json};

/// Words that are one GPT-2 token each with their leading space, so a prompt of 64 of them is
/// 64 tokens.
const WORDS: [&str; 16] = [" the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " was", " with", " be", " by", " on", " not"];
const PROMPT_TOKENS: usize = 64;
/// 64 trained + 9 held out (the trainer holds out an eighth for its evaluation).
const PROMPTS: usize = 73;
const THREADS: &str = "2";

#[derive(Parser, Debug)]
#[command(name = "rlhf-bench-ppo", about = "The cpu-s PPO workload")]
struct Args {
    #[arg(long, default_value = "target/release/rlhf-trainer")]
    trainer: PathBuf,
    /// Scratch folder for the manifest, prompts and the run.
    #[arg(long, default_value = ".state/bench-ppo")]
    work: PathBuf,
    /// Results folder (ppo-cpu-s-<date>.md and .json).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

fn manifest(prompts: &Path) -> String {
    format!(
        "apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {{name: cpu-s}}\nspec:\n  image: unused\n  model:\n    family: gpt2\n    init: random\n    \
         architecture: {{vocabSize: 50257, hiddenSize: 256, numLayers: 4, numHeads: 4, maxPositions: 512}}\n  stages:\n    \
         - {{name: rm, kind: rm, dataset: {{synthetic: {{task: copy, samples: 16}}}}, training: {{batchSize: 8, maxSteps: 1, maxLength: 64}}}}\n    \
         - name: ppo\n      kind: ppo\n      dependsOn: [rm]\n      \
         dataset: {{path: {}}}\n      models: {{rewardModel: {{stage: rm}}}}\n      \
         training: {{batchSize: 8, microBatchSize: 8, epochs: 1, maxLength: 512, checkpointEvery: 1000}}\n      \
         ppo: {{rolloutBatchSize: 8, ppoEpochs: 1, generation: {{maxNewTokens: 64, temperature: 1.0, topK: 50}}}}\n",
        prompts.display()
    )
}

fn prompts() -> String {
    let mut state = 12345u64;
    (0..PROMPTS)
        .map(|_| {
            let text: String = (0..PROMPT_TOKENS)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); // Knuth's LCG
                    WORDS[(state >> 33) as usize % WORDS.len()]
                })
                .collect();
            format!("{}\n", json!({"prompt": text}))
        })
        .collect()
}

/// Samples per round in every phase: the rollout batch, learned from once (1 PPO epoch).
const ROLLOUT: f64 = 8.0;

/// (samples/s, TFLOP/s) of `phase` over `rounds`: each round's seconds are its samples over its rate.
fn rate(rounds: &[&Value], phase: &str) -> (f64, f64) {
    let (mut samples, mut seconds, mut flops) = (0.0, 0.0, 0.0);
    for r in rounds {
        let p = &r["phases"][phase];
        let n = ROLLOUT;
        let s = n / p["samples_per_second"].as_f64().unwrap_or(f64::NAN);
        samples += n;
        seconds += s;
        flops += p["tflops"].as_f64().unwrap_or(0.0) * s;
    }
    (samples / seconds, flops / seconds)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let work = args.work.canonicalize()?;
    let trainer = args.trainer.canonicalize().with_context(|| format!("{} (run `make build`)", args.trainer.display()))?;
    std::fs::write(work.join("prompts.jsonl"), prompts())?;
    std::fs::write(work.join("job.yaml"), manifest(&work.join("prompts.jsonl")))?;
    println!("cpu-s PPO: {PROMPTS} prompts x {PROMPT_TOKENS} tokens, {THREADS} threads; run in {}", work.display());
    let status = Command::new(&trainer)
        .args(["local", "job.yaml", "--output", "run"])
        .current_dir(&work)
        .env("OMP_NUM_THREADS", THREADS)
        .env("MKL_NUM_THREADS", THREADS)
        .status()
        .with_context(|| format!("running {}", trainer.display()))?;
    if !status.success() {
        bail!("rlhf-trainer failed: {status}");
    }
    let log = std::fs::read_to_string(work.join("run/ppo/metrics.jsonl"))?;
    let records: Vec<Value> = log.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let rounds: Vec<&Value> = records.iter().filter(|r| r.get("phases").is_some()).collect();
    if rounds.len() < 2 {
        bail!("expected several PPO rounds, got {}", rounds.len());
    }
    // Round 1 warms up (allocator, first-touch); the figures are rounds 2..
    let measured = &rounds[1..];
    let (experience, experience_tflops) = rate(measured, "experience");
    let (learn, learn_tflops) = rate(measured, "learn");
    let (overall, overall_tflops) = rate(measured, "train");
    let peak_rss = records.iter().filter_map(|r| r["memory"]["cpu"]["peak"].as_f64()).fold(0.0, f64::max) / f64::from(1 << 20);
    let date = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let m = machine();
    let result = json!({
        "date": date, "machine": m, "workload": "cpu-s", "threads": 2, "rounds": rounds.len(), "measuredRounds": measured.len(),
        "samplesPerSecond": {"experience": experience, "learn": learn, "overall": overall},
        "tflops": {"experience": experience_tflops, "learn": learn_tflops, "overall": overall_tflops},
        "peakRssMiB": peak_rss,
    });
    let md = format!(
        "# cpu-s PPO benchmark, {date}\n\n\
         `make bench` (`rlhf-bench-ppo`): actor, reference, critic and reward model are random GPT-2s (4 layers, 4 heads, hidden 256, \
         vocab 50257, context 512); 64 prompts of 64 tokens (+9 held out for the trainer's evaluation); 64 new tokens each, top-k 50, \
         temperature 1; rollout and train batch 8; 1 PPO epoch; {THREADS} threads (OMP_NUM_THREADS). One process, fp32, CPU.\n\n\
         Machine: {cpus} CPUs ({model}), {mem:.1} GiB memory.\n\n\
         | phase | samples/s | TFLOP/s |\n|---|---|---|\n\
         | experience (generate + score with 4 models) | {experience:.2} | {experience_tflops:.4} |\n\
         | learning (policy + value update) | {learn:.2} | {learn_tflops:.4} |\n\
         | overall | {overall:.2} | {overall_tflops:.4} |\n\n\
         Rounds 2..{n} of {n} (round 1 is warm-up). Peak RSS (VmHWM) of the trainer: {peak_rss:.0} MiB.\n\
         TFLOP/s use the README's formula (2N per position forward, 6N forward and backward). No peer ran in this run; a later \
         issue adds the comparison.\n",
        cpus = m["cpus"],
        model = m["cpuModel"].as_str().unwrap_or("unknown"),
        mem = m["memoryGiB"].as_f64().unwrap_or(0.0),
        n = rounds.len(),
    );
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("ppo-cpu-s-{date}.md"));
    std::fs::write(&path, &md)?;
    std::fs::write(path.with_extension("json"), serde_json::to_string_pretty(&result)? + "\n")?;
    println!("{md}\nwrote {} and .json", path.display());
    Ok(())
}
