//! Resolved settings: every default filled in, every cross-field rule checked. The user's spec is
//! never mutated; these are derived from it. [`TrainerConfig`] is what the trainer reads.
use serde::{Deserialize, Serialize};

use crate::{
    Architecture, BuiltinTokenizer, DatasetFields, DatasetFormat, Dtype, KlEstimator,
    LossAggregation, ModelFamily, Offload, Precision, StageKind, Strategy, SyntheticTask,
};

/// Weights a model starts from, as the trainer sees them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "from", content = "value")]
pub enum WeightsSource {
    /// The job's base model (`model`).
    Base,
    /// An earlier stage's final model; the trainer reads it from that stage's output folder.
    Stage(String),
    /// A Hugging Face folder inside the pod.
    Path(String),
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ResolvedTokenizer {
    Path(String),
    Builtin(BuiltinTokenizer),
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum BaseWeights {
    Path(String),
    Random(Architecture),
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    /// Set for random weights; for a folder only when the job named it (the trainer checks it
    /// against config.json's model_type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,
    pub weights: BaseWeights,
    /// The saved folders' dtype; None: the base folder's (fp32 for random weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Dtype>,
    pub tokenizer: ResolvedTokenizer,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum ResolvedDataset {
    File {
        path: String,
        format: DatasetFormat,
        #[serde(default)]
        fields: DatasetFields,
    },
    Synthetic {
        task: SyntheticTask,
        samples: u32,
        seed: u64,
    },
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModels {
    pub init: WeightsSource,
    /// PPO only.
    pub critic: Option<WeightsSource>,
    pub reference: Option<WeightsSource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTraining {
    pub learning_rate: f64,
    pub batch_size: u32,
    pub micro_batch_size: u32,
    /// batchSize / (microBatchSize x world size).
    pub gradient_accumulation: u32,
    pub epochs: u32,
    pub max_steps: Option<u64>,
    pub max_length: u32,
    pub warmup_steps: u32,
    pub weight_decay: f64,
    pub weight_decay_embeddings: bool,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub checkpoint_every: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedGeneration {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
}

/// Where one reward comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum RewardSource {
    /// A reward model's last-token score.
    Model(WeightsSource),
    ExactAnswer,
    Format {
        pattern: String,
    },
    Length {
        target_tokens: u32,
    },
    Http {
        url: String,
        timeout_seconds: f64,
    },
}

/// One weighted reward source; `name` labels its metrics (`source` in Prometheus).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedReward {
    pub name: String,
    pub weight: f64,
    pub source: RewardSource,
}

/// The settings every RL kind shares.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedRl {
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    pub kl_in_reward: bool,
    pub target_kl: Option<f64>,
    pub clip_range: f64,
    pub clip_range_high: f64,
    pub update_epochs: u32,
    /// Prompts per round, all ranks together.
    pub rollout_batch_size: u32,
    pub group_size: u32,
    pub reward_clip: f64,
    pub entropy_coef: f64,
    /// 0 is off.
    pub missing_eos_penalty: f64,
    pub ptx_coef: f64,
    pub ptx_dataset: Option<ResolvedDataset>,
    pub generation: ResolvedGeneration,
    /// At least one.
    pub rewards: Vec<ResolvedReward>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedPpo {
    pub value_clip_range: f64,
    pub gamma: f64,
    pub lambda: f64,
    pub critic_learning_rate: f64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedGrpo {
    pub scale_by_std: bool,
    pub loss_aggregation: LossAggregation,
    pub dynamic_sampling: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDpo {
    pub beta: f64,
    pub label_smoothing: f64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedLora {
    pub rank: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedParallelism {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub strategy: Strategy,
    pub offload: Offload,
    pub lora: Option<ResolvedLora>,
    pub precision: Precision,
    pub gradient_checkpointing: bool,
}

impl ResolvedParallelism {
    /// Trainer processes in the gang.
    pub fn world_size(&self) -> u32 {
        self.nodes * self.gpus_per_node
    }
}

/// One stage with every default filled in.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedStage {
    pub name: String,
    pub kind: StageKind,
    pub depends_on: Vec<String>,
    pub dataset: ResolvedDataset,
    pub models: ResolvedModels,
    pub training: ResolvedTraining,
    /// RL kinds only.
    pub rl: Option<ResolvedRl>,
    pub ppo: Option<ResolvedPpo>,
    pub grpo: Option<ResolvedGrpo>,
    pub dpo: Option<ResolvedDpo>,
    pub parallelism: ResolvedParallelism,
}

impl ResolvedStage {
    /// Every model source the stage loads: its own models and its reward models.
    pub fn weight_sources(&self) -> Vec<&WeightsSource> {
        let m = &self.models;
        let rewards = self.rl.iter().flat_map(|rl| &rl.rewards);
        std::iter::once(&m.init)
            .chain(m.critic.iter().chain(&m.reference))
            .chain(rewards.filter_map(|r| match &r.source {
                RewardSource::Model(w) => Some(w),
                _ => None,
            }))
            .collect()
    }

    /// [`weight_sources`](Self::weight_sources), to rewrite them (paths anchored elsewhere).
    pub fn weight_sources_mut(&mut self) -> Vec<&mut WeightsSource> {
        let m = &mut self.models;
        let rewards = self.rl.iter_mut().flat_map(|rl| &mut rl.rewards);
        std::iter::once(&mut m.init)
            .chain(m.critic.iter_mut().chain(&mut m.reference))
            .chain(rewards.filter_map(|r| match &mut r.source {
                RewardSource::Model(w) => Some(w),
                _ => None,
            }))
            .collect()
    }
}

/// Where a stage writes: `<storage>/<namespace>/<job>/<stage>/` (docs/ARCHITECTURE.md#output-layout).
pub fn stage_output_dir(storage_root: &str, namespace: &str, job: &str, stage: &str) -> String {
    format!(
        "{}/{namespace}/{job}/{stage}",
        storage_root.trim_end_matches('/')
    )
}

/// Everything one stage's trainer processes need; the operator renders it into the stage's
/// ConfigMap and points `RLHF_CONFIG` at it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainerConfig {
    pub job: String,
    pub namespace: String,
    pub model: ResolvedModel,
    pub stage: ResolvedStage,
    /// This stage's output folder (checkpoints, final model, metrics log, curves).
    pub output_dir: String,
    /// Output folders of the stages this one reads weights from, by stage name.
    pub stage_outputs: std::collections::BTreeMap<String, String>,
    /// Rank `LOCAL_RANK` serves Prometheus metrics on this port + `LOCAL_RANK`.
    pub metrics_port: u16,
}
