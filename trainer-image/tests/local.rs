//! `rlhf-trainer local`: a whole manifest runs stage by stage into HF folders and metrics logs,
//! a rerun skips finished stages, and a bad manifest is a permanent error (exit code 2).
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::scratch;

/// The quickstart pipeline cut to a few steps per stage.
const MANIFEST: &str = r#"
apiVersion: rlhf.dev/v1alpha1
kind: RLHFJob
metadata: {name: tiny}
spec:
  image: unused
  model:
    family: llama
    init: random
    architecture: {vocabSize: 50257, hiddenSize: 32, numLayers: 1, numHeads: 4, numKvHeads: 2, maxPositions: 64}
  stages:
    - {name: sft, kind: sft, dataset: {synthetic: {task: copy, samples: 16}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32}}
    - {name: rm, kind: rm, dataset: {synthetic: {task: arithmetic, samples: 16}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32}}
    - name: ppo
      kind: ppo
      dependsOn: [sft, rm]
      dataset: {synthetic: {task: copy, samples: 16}}
      models: {init: {stage: sft}, rewardModel: {stage: rm}}
      training: {batchSize: 8, microBatchSize: 4, maxSteps: 1, maxLength: 32}
      ppo: {rolloutBatchSize: 8, generation: {maxNewTokens: 6}}
"#;

fn local(manifest: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"))
        .args(["local", manifest.to_str().unwrap(), "--output", output.to_str().unwrap()])
        .output()
        .expect("running rlhf-trainer")
}

#[test]
fn a_manifest_runs_end_to_end_and_resumes_by_stage() {
    let dir = scratch("local");
    let manifest = dir.join("job.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let out = local(&manifest, &dir.join("out"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for stage in ["sft", "rm", "ppo"] {
        let folder = dir.join(format!("out/local/tiny/{stage}"));
        for file in ["model/config.json", "model/model.safetensors", "metrics.jsonl"] {
            assert!(folder.join(file).exists(), "{stage}: {file} missing");
        }
    }
    let rm_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/local/tiny/rm/model/config.json")).unwrap()).unwrap();
    assert_eq!(rm_config["architectures"][0], "LlamaForSequenceClassification");
    let ppo_log = std::fs::read_to_string(dir.join("out/local/tiny/ppo/metrics.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(ppo_log.lines().next().unwrap()).unwrap();
    assert!(record["reward_mean"].is_f64() && record["kl"].is_f64(), "{record}");
    // sft and rm may run in either order, ppo last.
    let ppo_at = stdout.find("ppo: running").unwrap();
    assert!(stdout.find("sft: done").unwrap() < ppo_at && stdout.find("rm: done").unwrap() < ppo_at, "{stdout}");

    let again = local(&manifest, &dir.join("out"));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert_eq!(stdout.matches("already done").count(), 3, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_manifest_is_a_permanent_error_naming_the_field() {
    let dir = scratch("local-bad");
    let manifest = dir.join("job.yaml");
    std::fs::write(&manifest, MANIFEST.replace("dependsOn: [sft, rm]", "dependsOn: [sft]")).unwrap();
    let out = local(&manifest, &dir.join("out"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("job.yaml: spec.stages[2].models.rewardModel.stage: stage \"rm\" must be in dependsOn"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
