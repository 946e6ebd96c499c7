//! The Helm chart rendered by the real Helm engine (helm-python-sdk, through scripts/helm.py).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// docs/ARCHITECTURE.md#metrics: the trainer metrics every dashboard relies on.
pub const TRAINER_METRICS: &[&str] = &[
    "rlhf_trainer_step",
    "rlhf_trainer_samples_per_second",
    "rlhf_trainer_tokens_per_second",
    "rlhf_trainer_tflops",
    "rlhf_trainer_memory_bytes",
    "rlhf_trainer_reward_mean",
    "rlhf_trainer_reward_std",
    "rlhf_trainer_kl",
    "rlhf_trainer_entropy",
    "rlhf_trainer_loss",
    "rlhf_trainer_clip_fraction",
    "rlhf_trainer_clip_fraction_low",
    "rlhf_trainer_clip_fraction_high",
    "rlhf_trainer_reward_source_mean",
    "rlhf_trainer_response_length_tokens",
    "rlhf_trainer_responses_ended_ratio",
    "rlhf_trainer_group_reward_std",
    "rlhf_trainer_groups_dropped_ratio",
    "rlhf_trainer_rm_accuracy",
];

/// The repository's chart folder.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/rlhf-operator")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// The Python that has helm-python-sdk: RLHF_HELM_PYTHON (the Makefile sets it), or the one
/// scripts/install-helm-sdk.sh installs (it prints its folder).
pub fn helm_python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RLHF_HELM_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/install-helm-sdk.sh"))
        .output()
        .context("running scripts/install-helm-sdk.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/install-helm-sdk.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let venv = String::from_utf8(out.stdout)?.trim().to_string();
    Ok(PathBuf::from(venv).join("bin/python"))
}

/// Runs `scripts/helm.py ARGS`; returns its stdout, or an error with its output.
pub fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new(helm_python()?)
        .arg(repo_root().join("scripts/helm.py"))
        .args(args)
        .output()
        .context("running scripts/helm.py")?;
    if !out.status.success() {
        bail!(
            "scripts/helm.py {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The chart's manifests for `release` in `namespace` (with a values file if given), one value
/// per document.
pub fn render(
    namespace: &str,
    release: &str,
    values: Option<&Path>,
) -> Result<Vec<serde_yaml::Value>> {
    let chart = chart_dir();
    let mut args = vec![
        "render".to_string(),
        chart.to_string_lossy().into_owned(),
        "--namespace".into(),
        namespace.into(),
        "--release".into(),
        release.into(),
    ];
    if let Some(v) = values {
        args.extend(["--values".to_string(), v.to_string_lossy().into_owned()]);
    }
    let text = helm(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).context("rendered YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The kind of a rendered document.
pub fn kind(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}
