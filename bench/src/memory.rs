//! `rlhf-bench-memory`: peak memory of PPO under each memory lever, for the cpu-s workload and
//! GPT-2 124M (workload.rs; two PPO rounds each): plain, LoRA, offload, LoRA + offload +
//! activation checkpointing, and zero2 over 2 ranks. On this CPU machine the figure is rank 0's
//! peak RSS (VmHWM); results in bench/results/memory-<date>.{md,json}.
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use rlhf_bench::machine;
use rlhf_bench::workload::{self, CPU_S, GPT2_124M, Model};
use serde::Serialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "rlhf-bench-memory",
    about = "Peak memory of PPO under each memory lever"
)]
struct Args {
    #[arg(long, default_value = "target/release/rlhf-trainer")]
    trainer: PathBuf,
    #[arg(long, default_value = ".state/bench-memory")]
    work: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Only the cpu-s workload (GPT-2 124M takes most of the time on a CPU).
    #[arg(long)]
    small_only: bool,
}

/// One measured (model, lever): a row of the results table and of the JSON file.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    model: &'static str,
    lever: &'static str,
    /// The manifest's `parallelism` for this lever (YAML flow mapping).
    parallelism: &'static str,
    #[serde(rename = "peakRssMiB")]
    peak_rss_mib: f64,
}

/// (name, parallelism, micro-batch): micro 4 under zero2 so 8 = 4 x 2 ranks.
const LEVERS: [(&str, &str, u32); 5] = [
    ("none", "{}", 8),
    ("lora", "{lora: {rank: 8}}", 8),
    ("offload", "{offload: all}", 8),
    (
        "lora+offload+checkpointing",
        "{lora: {rank: 8}, offload: all, gradientCheckpointing: true}",
        8,
    ),
    (
        "zero2 (2 ranks)",
        "{nodes: 1, gpusPerNode: 2, strategy: zero2}",
        4,
    ),
];

fn main() -> Result<()> {
    let args = Args::parse();
    let models: Vec<&Model> = if args.small_only {
        vec![&CPU_S]
    } else {
        vec![&CPU_S, &GPT2_124M]
    };
    let mut rows = Vec::new();
    for model in models {
        for (lever, parallelism, micro) in LEVERS {
            println!("== {} / {lever}", model.name);
            let records = workload::run(&args.trainer, &args.work, |prompts| {
                workload::manifest(model, prompts, parallelism, micro, Some(2))
            })?;
            let peak = workload::peak_rss_mib(&records);
            println!("== {} / {lever}: peak RSS {peak:.0} MiB", model.name);
            rows.push(Row {
                model: model.name,
                lever,
                parallelism,
                peak_rss_mib: peak,
            });
        }
    }
    let date = workload::today();
    let m = machine();
    let mut md = format!(
        "# PPO peak memory by lever, {date}\n\n`make bench` (`rlhf-bench-memory`): the PPO stage of the cpu-s workload and of GPT-2 124M \
         (actor, reference, critic, reward model; prompts 64 tokens, 64 new tokens, rollout and train batch 8, 1 PPO epoch, 2 rounds; \
         fp32 on this CPU). Figure: rank 0's peak RSS (VmHWM), which includes loading and the held-out evaluations.\n\n\
         Machine: {} CPUs ({}), {:.1} GiB memory; no GPU, so `offload` has nothing to move (optimizer state is already in CPU memory) \
         and CUDA peak memory is not measured here.\n\n| model | lever | peak RSS (MiB) | vs none |\n|---|---|---|---|\n",
        m.cpus, m.cpu_model, m.memory_gib
    );
    for row in &rows {
        // No "none" row for the model (it failed to run) leaves the ratio undefined, not 0.
        let base = rows
            .iter()
            .find(|r| r.model == row.model && r.lever == "none")
            .map_or(f64::NAN, |r| r.peak_rss_mib);
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} |\n",
            row.model,
            row.lever,
            row.peak_rss_mib,
            row.peak_rss_mib / base
        ));
    }
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("memory-{date}.md"));
    std::fs::write(&path, &md)?;
    std::fs::write(
        path.with_extension("json"),
        serde_json::to_string_pretty(&json!({"date": date, "machine": m, "rows": rows}))? + "\n",
    )?;
    println!("{md}\nwrote {} and .json", path.display());
    Ok(())
}
