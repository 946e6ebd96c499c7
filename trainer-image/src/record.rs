//! The records of `<output>/metrics.jsonl`, one JSON object a line: a training step's values
//! (`step`, the losses and statistics its algorithm produces, `phases`, `memory`) or a held-out
//! evaluation (`step`, `eval`, `memory`). A value the step does not have is left out of the JSON,
//! so each algorithm's lines carry only its own keys; readers get `None` for the others.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of the metrics log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Optimizer steps (PPO: rounds) completed.
    pub step: u64,
    /// SFT, RM, DPO: the batch's mean training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// RM: pairwise accuracy on the step's batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm_accuracy: Option<f64>,
    /// SFT, RM, DPO: this rank's optimizer state (moments, master weights) in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_state_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_std: Option<f64>,
    /// PPO: mean per-token KL to the reference policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// PPO: the KL penalty coefficient the round's experience was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_coef: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_loss: Option<f64>,
    /// PPO with a ptx dataset: the pretraining loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptx_loss: Option<f64>,
    /// RL: share of tokens whose policy ratio was clipped (low + high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_fraction: Option<f64>,
    /// RL: share clipped at 1 - clipRange (negative advantages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_fraction_low: Option<f64>,
    /// RL: share clipped at 1 + clipRangeHigh (positive advantages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_fraction_high: Option<f64>,
    /// RL: mean response length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_length_tokens: Option<f64>,
    /// RL: share of responses that ended with EOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses_ended_ratio: Option<f64>,
    /// RL with groups: mean over groups of the rewards' standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_reward_std: Option<f64>,
    /// RL with groups: share of groups left out of the loss (GRPO's dynamic sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_dropped_ratio: Option<f64>,
    /// RL: each reward source's mean raw score, by source name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_sources: BTreeMap<String, f64>,
    /// Throughput of the step's phases (training records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
    /// Memory of the process that logged the record, by device (`cpu`, `cuda:<i>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory: BTreeMap<String, DeviceMemory>,
    /// A held-out evaluation (then the record has no training values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<Evaluation>,
}

impl Record {
    /// A held-out evaluation after `step` steps.
    pub fn evaluation(step: u64, eval: Evaluation) -> Self {
        Self {
            step,
            eval: Some(eval),
            ..Self::default()
        }
    }

    /// The training values the record has, by their JSON keys, in a fixed order.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        present([
            ("loss", self.loss),
            ("rm_accuracy", self.rm_accuracy),
            ("reward_mean", self.reward_mean),
            ("reward_std", self.reward_std),
            ("kl", self.kl),
            ("kl_coef", self.kl_coef),
            ("entropy", self.entropy),
            ("policy_loss", self.policy_loss),
            ("value_loss", self.value_loss),
            ("ptx_loss", self.ptx_loss),
            ("clip_fraction", self.clip_fraction),
            ("clip_fraction_low", self.clip_fraction_low),
            ("clip_fraction_high", self.clip_fraction_high),
            ("response_length_tokens", self.response_length_tokens),
            ("responses_ended_ratio", self.responses_ended_ratio),
            ("group_reward_std", self.group_reward_std),
            ("groups_dropped_ratio", self.groups_dropped_ratio),
            (
                "optimizer_state_bytes",
                self.optimizer_state_bytes.map(|b| b as f64),
            ),
        ])
    }
}

/// A held-out evaluation's values; each stage kind fills its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// SFT: mean loss on the held-out responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// RM: share of held-out pairs ranked the right way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// DPO: mean implicit reward margin of chosen over rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// DPO: share of pairs with a positive margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    /// RL: mean total reward of responses sampled to the held-out prompts (4 each, fixed seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_mean: Option<f64>,
    /// RL: mean per-token KL of those responses to the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// RL: each reward source's mean score on those responses (exactAnswer: the accuracy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_sources: BTreeMap<String, f64>,
}

impl Evaluation {
    /// The values the evaluation has, by their JSON keys, in a fixed order.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        present([
            ("loss", self.loss),
            ("accuracy", self.accuracy),
            ("margin", self.margin),
            ("win_rate", self.win_rate),
            ("reward_mean", self.reward_mean),
            ("kl", self.kl),
        ])
    }
}

fn present<const N: usize>(values: [(&'static str, Option<f64>); N]) -> Vec<(&'static str, f64)> {
    values
        .into_iter()
        .filter_map(|(key, v)| Some((key, v?)))
        .collect()
}

/// The phases of a step: PPO has all three, the supervised loops `train` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experience: Option<Rates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn: Option<Rates>,
    /// The whole step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<Rates>,
}

impl Phases {
    /// The phases present, by their JSON keys.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Rates)> {
        [
            ("experience", &self.experience),
            ("learn", &self.learn),
            ("train", &self.train),
        ]
        .into_iter()
        .filter_map(|(name, rates)| Some((name, rates.as_ref()?)))
    }
}

/// The work a phase did per second (README: FLOP formula).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub samples_per_second: f64,
    pub tokens_per_second: f64,
    pub tflops: f64,
}

/// One device's memory in bytes: `rss` and `peak` (resident) on the CPU, `allocated` and `peak`
/// on a CUDA device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<f64>,
}

impl DeviceMemory {
    /// The kinds present, by their JSON keys.
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        present([
            ("rss", self.rss),
            ("allocated", self.allocated),
            ("peak", self.peak),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_keep_the_logs_keys_and_leave_out_what_a_step_lacks() {
        let ppo = json!({"step": 2, "reward_mean": 0.5, "reward_std": 0.1, "kl": 0.01,
            "kl_coef": 0.1, "entropy": 2.0, "policy_loss": -0.1, "value_loss": 0.4,
            "clip_fraction": 0.0, "ptx_loss": 1.5,
            "phases": {"experience": {"samples_per_second": 1.0, "tokens_per_second": 2.0, "tflops": 3.0},
                       "learn": {"samples_per_second": 4.0, "tokens_per_second": 5.0, "tflops": 6.0},
                       "train": {"samples_per_second": 7.0, "tokens_per_second": 8.0, "tflops": 9.0}},
            "memory": {"cpu": {"rss": 1e8, "peak": 2e8}, "cuda:0": {"allocated": 3e8, "peak": 4e8}}});
        let sft = json!({"step": 3, "loss": 1.25, "optimizer_state_bytes": 4096,
            "phases": {"train": {"samples_per_second": 7.0, "tokens_per_second": 8.0, "tflops": 9.0}},
            "memory": {"cpu": {"rss": 1e8, "peak": 2e8}}});
        let eval = json!({"step": 0, "eval": {"margin": 0.25, "win_rate": 0.5},
            "memory": {"cpu": {"rss": 1e8, "peak": 2e8}}});
        for line in [ppo, sft, eval] {
            let record: Record = serde_json::from_value(line.clone()).unwrap();
            assert_eq!(serde_json::to_value(&record).unwrap(), line);
        }
    }

    #[test]
    fn values_list_what_is_present() {
        let r = Record {
            step: 1,
            loss: Some(2.0),
            optimizer_state_bytes: Some(8),
            ..Record::default()
        };
        assert_eq!(r.values(), [("loss", 2.0), ("optimizer_state_bytes", 8.0)]);
        let e = Evaluation {
            accuracy: Some(0.5),
            ..Evaluation::default()
        };
        assert_eq!(Record::evaluation(0, e).values(), []);
    }
}
