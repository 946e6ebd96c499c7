//! Multi-process training on CPU (Gloo over loopback, through `rlhf-trainer local`): two ranks
//! under ddp, zero1 and zero2 end with the same weights as one rank on the same global batch,
//! ZeRO holds about half the optimizer state per rank, gradient accumulation equals a bigger
//! micro-batch (SFT, RM and PPO), and the launcher passes a worker's failure on.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{local, run_local, scratch, tiny_job};
use tch::Tensor;

/// An SFT and an RM stage of 4 steps with global batch 8 and `parallelism`, micro-batches of
/// `micro` (RM: a pairwise mean, so accumulation is exactly a bigger batch).
fn job(parallelism: &str, micro: u32) -> String {
    let stages = format!(
        "\n    - {{name: sft, kind: sft, dataset: {{synthetic: {{task: copy, samples: 64}}}}, training: {{batchSize: 8, microBatchSize: {micro}, maxLength: 32, maxSteps: 4, weightDecay: 0.01}}}}\
         \n    - {{name: rm, kind: rm, dataset: {{synthetic: {{task: copy, samples: 64}}}}, training: {{batchSize: 8, microBatchSize: {micro}, maxLength: 32, maxSteps: 4}}}}\n"
    );
    tiny_job("par", parallelism, &stages)
}

fn run(dir: &Path, name: &str, manifest: &str) -> PathBuf {
    run_local(dir, name, manifest).0
}

/// The weights saved in `<run>/<folder>/model.safetensors`.
fn saved(run: &Path, folder: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(run.join(folder).join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn weights(run: &Path, stage: &str) -> HashMap<String, Tensor> {
    saved(run, &format!("{stage}/model"))
}

fn max_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| (t - &b[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

/// The optimizer state bytes rank 0 reported at the last step of a stage.
fn state_bytes(run: &Path, stage: &str) -> f64 {
    let log = std::fs::read_to_string(run.join(stage).join("metrics.jsonl")).unwrap();
    log.lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["optimizer_state_bytes"].as_f64()
        })
        .next_back()
        .unwrap()
}

#[test]
fn two_ranks_match_one_rank_under_every_strategy() {
    let dir = scratch("parallel");
    let single = run(&dir, "single", &job("{nodes: 1, gpusPerNode: 1}", 4));
    let single_sft = weights(&single, "sft");
    let single_bytes = state_bytes(&single, "sft");
    for strategy in ["ddp", "zero1", "zero2"] {
        let two = run(
            &dir,
            strategy,
            &job(
                &format!("{{nodes: 1, gpusPerNode: 2, strategy: {strategy}}}"),
                4,
            ),
        );
        let diff = max_difference(&single_sft, &weights(&two, "sft"));
        let ratio = state_bytes(&two, "sft") / single_bytes;
        println!(
            "{strategy}: 2 ranks vs 1, max weight difference after 4 steps {diff:.2e}; rank 0 optimizer state {ratio:.3} of one rank's"
        );
        assert!(diff < 1e-5, "{strategy}: weights differ by {diff}");
        if strategy == "ddp" {
            assert_eq!(ratio, 1.0, "ddp replicates the state");
        } else {
            assert!(
                (ratio - 0.5).abs() < 0.01,
                "{strategy}: state per rank should be about half: {ratio}"
            );
        }
    }
    // Accumulation: 2 micro-batches of 4 = 1 micro-batch of 8 (RM's loss is a mean over pairs).
    let big_micro = run(&dir, "micro8", &job("{nodes: 1, gpusPerNode: 1}", 8));
    let diff = max_difference(&weights(&single, "rm"), &weights(&big_micro, "rm"));
    println!("accumulation: 2 x 4 vs 1 x 8, max weight difference {diff:.2e}");
    assert!(
        diff < 1e-5,
        "gradient accumulation differs from the bigger batch by {diff}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under zero2 the decay exclusions (biases, norms, embeddings) apply per element of the flat
/// shards: 2 ranks end where 1 rank does. The decay is made large enough (lr x wd x steps =
/// 4e-4 on weights near 1) that a misplaced exclusion would exceed the tolerance.
#[test]
fn zero2_excludes_the_same_weights_from_decay_as_one_rank() {
    let dir = scratch("parallel-decay");
    let job = |parallelism: &str| {
        let stages = "\n    - {name: sft, kind: sft, dataset: {synthetic: {task: copy, samples: 64}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32, maxSteps: 4, learningRate: 1.0e-3, weightDecay: 0.1}}\n";
        tiny_job("decay", parallelism, stages)
    };
    let single = run(&dir, "single", &job("{nodes: 1, gpusPerNode: 1}"));
    let zero2 = run(
        &dir,
        "zero2",
        &job("{nodes: 1, gpusPerNode: 2, strategy: zero2}"),
    );
    let diff = max_difference(&weights(&single, "sft"), &weights(&zero2, "sft"));
    println!("weight decay 0.1, zero2 on 2 ranks vs 1: max weight difference {diff:.2e}");
    assert!(diff < 1e-5, "weights differ by {diff}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_launcher_exits_with_a_failed_workers_code() {
    let dir = scratch("launcher");
    let manifest = job("{nodes: 1, gpusPerNode: 2}", 4).replace(
        "{synthetic: {task: copy, samples: 64}}",
        "{path: missing.jsonl}",
    );
    let path = dir.join("job.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = local(&path, "--output", &dir.join("out")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad input in a worker is permanent for the whole stage: {stderr}"
    );
    assert!(
        stderr.contains("missing.jsonl") && stderr.contains("failed with exit code 2"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// PPO on fixed inputs (the same base model, reward model and seeds): 2 ranks under zero2, each
/// accumulating 2 micro-batches of 2 rows, end where 1 rank does with the step's 8 rows in one
/// micro-batch: experience is seeded per row, advantages are whitened over all ranks and losses
/// normalised by the global token count. The learning rates are large enough (2 rounds x 2
/// epochs at 1e-3) that a per-rank normalisation would exceed the tolerance.
#[test]
fn ppo_on_two_ranks_with_accumulation_learns_like_one_rank_with_the_whole_batch() {
    let dir = scratch("parallel-ppo");
    let job = |parallelism: &str, micro: u32| {
        let stages = format!("
    - {{name: rm, kind: rm, dataset: {{synthetic: {{task: copy, samples: 16}}}}, training: {{batchSize: 8, microBatchSize: 4, maxLength: 32, maxSteps: 1}}}}
    - name: ppo
      kind: ppo
      dependsOn: [rm]
      dataset: {{synthetic: {{task: copy, samples: 32}}}}
      models: {{rewardModel: {{stage: rm}}}}
      training: {{batchSize: 8, microBatchSize: {micro}, maxSteps: 2, maxLength: 32, learningRate: 1.0e-3, checkpointEvery: 1}}
      rl: {{rolloutBatchSize: 8, updateEpochs: 2, generation: {{maxNewTokens: 6}}}}
      ppo: {{criticLearningRate: 1.0e-3}}
");
        tiny_job("ppo2", parallelism, &stages)
    };
    let single = run(&dir, "single", &job("{nodes: 1, gpusPerNode: 1}", 8));
    let two = run(
        &dir,
        "zero2",
        &job("{nodes: 1, gpusPerNode: 2, strategy: zero2}", 2),
    );
    let log = std::fs::read_to_string(two.join("ppo/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("phases").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2], "one record per round, from rank 0 only");
    for part in ["model", "critic"] {
        let folder = format!("ppo/{part}");
        let diff = max_difference(&saved(&single, &folder), &saved(&two, &folder));
        println!(
            "PPO {part}: 2 ranks x 2 micro-batches vs 1 rank x 1, max weight difference {diff:.2e}"
        );
        assert!(diff < 1e-5, "PPO {part}: weights differ by {diff}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SFT losses rank 0 logged, step by step.
fn losses(run: &Path) -> Vec<f64> {
    let log = std::fs::read_to_string(run.join("sft/metrics.jsonl")).unwrap();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("phases").is_some())
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn offload_checkpointing_bf16_and_fp16_keep_training_the_same() {
    let dir = scratch("parallel-offload");
    let single = run(&dir, "single", &job("{nodes: 1, gpusPerNode: 1}", 4));
    for (name, parallelism) in [
        ("offload", "{nodes: 1, gpusPerNode: 1, offload: optimizer}"),
        (
            "checkpointing",
            "{nodes: 1, gpusPerNode: 1, gradientCheckpointing: true}",
        ),
        (
            "zero2-offload-checkpointing",
            "{nodes: 1, gpusPerNode: 2, strategy: zero2, offload: all, gradientCheckpointing: true}",
        ),
    ] {
        let other = run(&dir, name, &job(parallelism, 4));
        let diff = max_difference(&weights(&single, "sft"), &weights(&other, "sft"));
        println!("{name}: max weight difference to the plain run after 4 steps {diff:.2e}");
        assert!(diff < 1e-5, "{name}: weights differ by {diff}");
    }
    // bf16 weights and activations, fp32 master weights: the same losses to bf16's precision.
    let bf16 = run(
        &dir,
        "bf16",
        &job("{nodes: 1, gpusPerNode: 1, precision: bf16}", 4),
    );
    let (fp32_losses, bf16_losses) = (losses(&single), losses(&bf16));
    println!("fp32 losses {fp32_losses:.4?}\nbf16 losses {bf16_losses:.4?}");
    for (a, b) in fp32_losses.iter().zip(&bf16_losses) {
        assert!(
            (a - b).abs() / a < 0.01,
            "bf16 loss {b} strays from fp32 {a}"
        );
    }
    let diff = max_difference(&weights(&single, "sft"), &weights(&bf16, "sft"));
    assert!(
        diff > 0.0 && diff < 0.02,
        "bf16 weights should be near, not equal, to fp32's: {diff}"
    );
    assert!(
        state_bytes(&bf16, "sft") > 1.4 * state_bytes(&single, "sft"),
        "bf16 keeps fp32 master weights besides the moments"
    );
    // fp16 with dynamic loss scaling: the same losses to fp16's precision, no step skipped.
    let fp16 = run(
        &dir,
        "fp16",
        &job("{nodes: 1, gpusPerNode: 1, precision: fp16}", 4),
    );
    let fp16_losses = losses(&fp16);
    println!("fp16 losses {fp16_losses:.4?}");
    assert_eq!(fp16_losses.len(), fp32_losses.len());
    for (a, b) in fp32_losses.iter().zip(&fp16_losses) {
        assert!(
            (a - b).abs() / a < 0.01,
            "fp16 loss {b} strays from fp32 {a}"
        );
    }
    let diff = max_difference(&weights(&single, "sft"), &weights(&fp16, "sft"));
    assert!(
        diff > 0.0 && diff < 0.02,
        "fp16 weights should be near fp32's (an overflow-skipped step would leave them apart): {diff}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
