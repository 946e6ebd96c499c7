//! The trainer's Prometheus metrics (names in docs/ARCHITECTURE.md#metrics), set from the same
//! [`Record`]s that go to `metrics.jsonl`, and their HTTP server for `/metrics` (`server.rs`; one
//! per process, on `RLHF_METRICS_PORT` + `LOCAL_RANK`).
//!
//! A gauge reads a record's values by their log keys ([`Record::values`]: `loss`, `policy_loss`,
//! `reward_mean`, `kl`, ...), its phases' rates and its memory by device and kind. Held-out
//! evaluations (`eval`) stay in the log only.
use std::collections::HashMap;

use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

use crate::error::{Error, Result};
use crate::record::Record;

pub struct TrainerMetrics {
    registry: Registry,
    /// Record key -> gauge (`step` -> `rlhf_trainer_step`, ...).
    scalars: Vec<(&'static str, Gauge)>,
    loss: GaugeVec,
    samples_per_second: GaugeVec,
    tokens_per_second: GaugeVec,
    tflops: GaugeVec,
    memory: GaugeVec,
    reward_source: GaugeVec,
}

/// Record keys that map one-to-one onto a gauge `rlhf_trainer_<key>`.
const SCALARS: [(&str, &str); 14] = [
    ("step", "Optimizer steps (PPO: rounds) completed"),
    ("reward_mean", "Mean total reward of the last rollout"),
    (
        "reward_std",
        "Standard deviation of the last rollout's scores",
    ),
    ("kl", "Mean per-token KL to the reference policy"),
    ("kl_coef", "KL penalty coefficient in use"),
    ("entropy", "Mean per-token entropy of the policy"),
    (
        "clip_fraction",
        "Share of tokens whose policy ratio was clipped",
    ),
    (
        "rm_accuracy",
        "Reward model pairwise accuracy on the step's batch",
    ),
    (
        "clip_fraction_low",
        "Share of tokens clipped at 1 - clipRange (negative advantages)",
    ),
    (
        "clip_fraction_high",
        "Share of tokens clipped at 1 + clipRangeHigh (positive advantages)",
    ),
    (
        "response_length_tokens",
        "Mean response length of the last rollout in tokens",
    ),
    (
        "responses_ended_ratio",
        "Share of the last rollout's responses that ended with EOS",
    ),
    (
        "groups_dropped_ratio",
        "Share of the last rollout's groups left out of the loss",
    ),
    (
        "group_reward_std",
        "Mean standard deviation of rewards within a prompt's group",
    ),
];

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels).map_err(prom)?;
    registry.register(Box::new(g.clone())).map_err(prom)?;
    Ok(g)
}

fn prom(e: prometheus::Error) -> Error {
    Error::invalid("<metrics>", e.to_string())
}

impl TrainerMetrics {
    /// Every series carries `labels` (rlhf_job, namespace, stage, rank).
    pub fn new(labels: HashMap<String, String>) -> Result<Self> {
        let registry = Registry::new_custom(None, Some(labels)).map_err(prom)?;
        let scalars = SCALARS
            .iter()
            .map(|&(key, help)| {
                let g = Gauge::new(format!("rlhf_trainer_{key}"), help).map_err(prom)?;
                registry.register(Box::new(g.clone())).map_err(prom)?;
                Ok((key, g))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            scalars,
            loss: gauge_vec(
                &registry,
                "rlhf_trainer_loss",
                "Training losses by kind",
                &["kind"],
            )?,
            samples_per_second: gauge_vec(
                &registry,
                "rlhf_trainer_samples_per_second",
                "Samples per second by phase",
                &["phase"],
            )?,
            tokens_per_second: gauge_vec(
                &registry,
                "rlhf_trainer_tokens_per_second",
                "Tokens per second by phase",
                &["phase"],
            )?,
            tflops: gauge_vec(
                &registry,
                "rlhf_trainer_tflops",
                "Achieved TFLOP/s by phase (README: FLOP formula)",
                &["phase"],
            )?,
            memory: gauge_vec(
                &registry,
                "rlhf_trainer_memory_bytes",
                "Memory by device and kind",
                &["device", "kind"],
            )?,
            reward_source: gauge_vec(
                &registry,
                "rlhf_trainer_reward_source_mean",
                "Mean raw score of the last rollout by reward source",
                &["source"],
            )?,
            registry,
        })
    }

    /// Sets every gauge the record has a value for (held-out evaluations stay in the log).
    pub fn observe(&self, record: &Record) {
        let values: HashMap<&str, f64> = [("step", record.step as f64)]
            .into_iter()
            .chain(record.values())
            .collect();
        for (key, gauge) in &self.scalars {
            if let Some(&v) = values.get(key) {
                gauge.set(v);
            }
        }
        for (key, &v) in &values {
            if let Some(kind) = loss_kind(key) {
                self.loss.with_label_values(&[kind]).set(v);
            }
        }
        for (phase, rates) in record.phases.iter().flat_map(|p| p.iter()) {
            for (gauge, v) in [
                (&self.samples_per_second, rates.samples_per_second),
                (&self.tokens_per_second, rates.tokens_per_second),
                (&self.tflops, rates.tflops),
            ] {
                gauge.with_label_values(&[phase]).set(v);
            }
        }
        for (source, &v) in &record.reward_sources {
            self.reward_source
                .with_label_values(&[source.as_str()])
                .set(v);
        }
        for (device, memory) in &record.memory {
            for (kind, v) in memory.values() {
                self.memory
                    .with_label_values(&[device.as_str(), kind])
                    .set(v);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// `loss` -> "train", `policy_loss` -> "policy", `value_loss` -> "value", `ptx_loss` -> "ptx".
fn loss_kind(key: &str) -> Option<&str> {
    if key == "loss" {
        Some("train")
    } else {
        key.strip_suffix("_loss")
    }
}

mod server;
pub use server::serve;

/// This process's resident and peak resident memory in bytes (Linux `/proc/self/status`).
pub fn process_memory() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(
            line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()?
                * 1024.0,
        )
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

#[cfg(test)]
mod tests;
