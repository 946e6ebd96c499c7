//! `rlhf-bench-ppo`: the cpu-s PPO workload (workload.rs) through `rlhf-trainer local`. Reports
//! experience, learning and overall samples/s (from the trainer's per-round metrics log) and
//! peak RSS, in bench/results/ppo-cpu-s-<date>.
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;
use rlhf_bench::machine;
use rlhf_bench::workload::{self, CPU_S, PROMPT_TOKENS, PROMPTS, Phases, ROLLOUT, Rates, THREADS};
use serde_json::json;

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

/// (samples/s, TFLOP/s) of the phase `phase` picks over `rounds`: each round's seconds are its
/// samples over its rate; a round without the phase makes the rate NaN.
fn rate(rounds: &[&Phases], phase: fn(&Phases) -> Option<&Rates>) -> (f64, f64) {
    let (mut samples, mut seconds, mut flops) = (0.0, 0.0, 0.0);
    for p in rounds.iter().map(|r| phase(r)) {
        let n = ROLLOUT;
        let s = p.map_or(f64::NAN, |p| n / p.samples_per_second);
        samples += n;
        seconds += s;
        flops += p.map_or(0.0, |p| p.tflops) * s;
    }
    (samples / seconds, flops / seconds)
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "cpu-s PPO: {PROMPTS} prompts x {PROMPT_TOKENS} tokens, {THREADS} threads; run in {}",
        args.work.display()
    );
    let records = workload::run(&args.trainer, &args.work, |prompts| {
        workload::manifest(&CPU_S, prompts, "{}", 8, None)
    })?;
    let rounds: Vec<&Phases> = records.iter().filter_map(|r| r.phases.as_ref()).collect();
    if rounds.len() < 2 {
        bail!("expected several PPO rounds, got {}", rounds.len());
    }
    // Round 1 warms up (allocator, first-touch); the figures are rounds 2..
    let measured = &rounds[1..];
    let (experience, experience_tflops) = rate(measured, |p| p.experience.as_ref());
    let (learn, learn_tflops) = rate(measured, |p| p.learn.as_ref());
    let (overall, overall_tflops) = rate(measured, |p| p.train.as_ref());
    let peak_rss = workload::peak_rss_mib(&records);
    let date = workload::today();
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
        cpus = m.cpus,
        model = m.cpu_model,
        mem = m.memory_gib,
        n = rounds.len(),
    );
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("ppo-cpu-s-{date}.md"));
    std::fs::write(&path, &md)?;
    std::fs::write(
        path.with_extension("json"),
        serde_json::to_string_pretty(&result)? + "\n",
    )?;
    println!("{md}\nwrote {} and .json", path.display());
    Ok(())
}
