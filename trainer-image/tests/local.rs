//! `rlhf-trainer local`: a whole manifest runs stage by stage into HF folders and metrics logs and
//! ends with a JSON summary; `--resume` skips finished stages and continues a killed one from its
//! newest checkpoint; a bad manifest is a permanent error (exit code 2).
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{local, scratch, tiny_job};

/// The quickstart pipeline cut to a few steps per stage.
const STAGES: &str = r#"
    - {name: sft, kind: sft, dataset: {synthetic: {task: copy, samples: 16}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32}}
    - {name: rm, kind: rm, dataset: {synthetic: {task: arithmetic, samples: 16}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32}}
    - name: ppo
      kind: ppo
      dependsOn: [sft, rm]
      dataset: {synthetic: {task: copy, samples: 16}}
      models: {init: {stage: sft}, rewardModel: {stage: rm}}
      training: {batchSize: 8, microBatchSize: 4, maxSteps: 1, maxLength: 32}
      rl: {rolloutBatchSize: 8, generation: {maxNewTokens: 6}, ptxCoef: 0.5, ptxDataset: {synthetic: {task: copy, samples: 8}}}
"#;

fn job_yaml() -> String {
    tiny_job("tiny", "{}", STAGES)
}

fn run(manifest: &Path, flag: &str, folder: &Path) -> Output {
    local(manifest, flag, folder)
        .output()
        .expect("running rlhf-trainer")
}

/// Training steps in a metrics log (a line still being written is skipped).
fn steps(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("eval").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_manifest_runs_end_to_end_and_resumes_by_stage() {
    let dir = scratch("local");
    let manifest = dir.join("job.yaml");
    std::fs::write(&manifest, job_yaml()).unwrap();
    let out = run(&manifest, "--output", &dir.join("out"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in ["sft", "rm", "ppo"] {
        let folder = dir.join(format!("out/{stage}"));
        for file in [
            "model/config.json",
            "model/model.safetensors",
            "metrics.jsonl",
        ] {
            assert!(folder.join(file).exists(), "{stage}: {file} missing");
        }
    }
    let rm_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("out/rm/model/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rm_config["architectures"][0],
        "LlamaForSequenceClassification"
    );
    let ppo_log = std::fs::read_to_string(dir.join("out/ppo/metrics.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(ppo_log.lines().nth(1).unwrap()).unwrap();
    assert!(
        record["reward_mean"].is_f64()
            && record["kl"].is_f64()
            && record["ptx_loss"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    assert!(
        record["phases"]["experience"]["tokens_per_second"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{record}"
    );
    assert!(
        record["memory"]["cpu"]["rss"].as_f64().unwrap() > 1e6,
        "{record}"
    );
    // Each stage draws its curves beside the log: PPO's reward panel is a line.
    let curves = std::fs::read_to_string(dir.join("out/ppo/curves.svg")).expect("ppo/curves.svg");
    assert!(
        curves.starts_with("<svg") && curves.contains(">reward mean</text>"),
        "{curves}"
    );
    let reward_panel = &curves[curves.find(">reward mean<").unwrap()..];
    assert!(
        reward_panel[..reward_panel.find("</g>").unwrap()].contains("<polyline"),
        "{curves}"
    );
    assert!(
        stdout.contains("ppo: done") && stdout.contains("training curves in"),
        "{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("a JSON summary last");
    for (stage, key) in [
        ("sft", "loss"),
        ("rm", "accuracy"),
        ("ppo", "reward_mean"),
        ("ppo", "kl"),
    ] {
        for end in ["first", "last"] {
            assert!(
                summary["stages"][stage][end][key].is_f64(),
                "{stage}.{end}.{key} in {summary}"
            );
        }
    }
    // sft and rm may run in either order, ppo last.
    let ppo_at = stdout.find("ppo: running").unwrap();
    assert!(
        stdout.find("sft: done").unwrap() < ppo_at && stdout.find("rm: done").unwrap() < ppo_at,
        "{stdout}"
    );

    // The trained model scores text through `logprobs`, with the tokenizer it was trained with.
    let model = dir.join("out/sft/model");
    let logprobs = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"))
            .args([
                "logprobs",
                "--model",
                model.to_str().unwrap(),
                "--text",
                "copy: cat dog =>",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let scored = logprobs(&["--tokenizer", "gpt2"]);
    let scored: serde_json::Value = serde_json::from_slice(&scored.stdout).expect("a JSON object");
    assert_eq!(
        scored["logprobs"].as_array().unwrap().len() + 1,
        scored["tokens"].as_array().unwrap().len()
    );
    assert!(
        scored["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.as_f64().unwrap() < 0.0),
        "{scored}"
    );
    // The saved folder carries the builtin tokenizer's files: the same tokens without --tokenizer.
    let own_tokenizer = logprobs(&[]);
    let own: serde_json::Value =
        serde_json::from_slice(&own_tokenizer.stdout).expect("a JSON object");
    assert_eq!(own["tokens"], scored["tokens"]);
    let refused = run(&manifest, "--output", &dir.join("out"));
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a used output folder is refused"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --resume"));
    let again = run(&manifest, "--resume", &dir.join("out"));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert_eq!(stdout.matches("already done").count(), 3, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_manifest_is_a_permanent_error_naming_the_field() {
    let dir = scratch("local-bad");
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        job_yaml().replace("dependsOn: [sft, rm]", "dependsOn: [sft]"),
    )
    .unwrap();
    let out = run(&manifest, "--output", &dir.join("out"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "job.yaml: spec.stages[2].models.rewardModel.stage: stage \"rm\" must be in dependsOn"
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_ppo_stage_resumes_from_its_last_checkpoint() {
    let dir = scratch("local-kill");
    let manifest = dir.join("job.yaml");
    let every: i64 = 3;
    let job = job_yaml().replace(
        "maxSteps: 1, maxLength: 32",
        &format!("maxSteps: 16, epochs: 16, maxLength: 32, checkpointEvery: {every}"),
    );
    std::fs::write(&manifest, job).unwrap();
    let run_dir = dir.join("out");
    let log = run_dir.join("ppo/metrics.jsonl");
    let mut child = local(&manifest, "--output", &run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Kill it between checkpoints, some rounds into PPO.
    let killed_after = loop {
        let done = steps(&std::fs::read_to_string(&log).unwrap_or_default());
        if done
            .last()
            .is_some_and(|&s| s >= 5 && s as i64 % every != 0)
        {
            child.kill().unwrap();
            child.wait().unwrap();
            break *done.last().unwrap();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "PPO made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = run(&manifest, "--resume", &run_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed: u64 = stdout
        .split("(step ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("a resume line");
    println!("killed after round {killed_after}, resumed from round {resumed}");
    assert!(
        (killed_after as i64 - resumed as i64) < every,
        "lost more than one checkpoint interval: {killed_after} -> {resumed}"
    );
    assert_eq!(
        steps(&std::fs::read_to_string(&log).unwrap()),
        (1..=16).collect::<Vec<_>>(),
        "every round logged once, in order"
    );
    assert!(run_dir.join("ppo/critic/model.safetensors").exists());
    // The same stage run without interruption (from the same SFT and RM models) ends with the
    // same weights: the checkpoint carried everything, RNG and optimizer moments included.
    let uninterrupted = dir.join("again");
    for stage in ["sft", "rm"] {
        copy_dir(&run_dir.join(stage), &uninterrupted.join(stage));
    }
    assert!(run(&manifest, "--resume", &uninterrupted).status.success());
    let weights = |root: &Path| std::fs::read(root.join("ppo/model/model.safetensors")).unwrap();
    assert!(
        weights(&run_dir) == weights(&uninterrupted),
        "killed and resumed PPO differs from an uninterrupted run"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
