//! One stage of the pipeline: what it trains, on which data, from which weights, how.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{GrpoParams, ParallelismSpec, PpoParams, RewardSpec, RlParams};

/// What a stage trains.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Supervised fine-tuning on prompt/response pairs.
    Sft,
    /// Reward model on chosen/rejected pairs.
    Rm,
    /// PPO of an actor against a reward model.
    Ppo,
    /// Direct preference optimisation against a frozen reference.
    Dpo,
    /// Group relative policy optimisation: group-normalised rewards, no critic.
    Grpo,
    /// REINFORCE leave-one-out: each response's baseline is its group's other rewards' mean.
    Rloo,
    /// REINFORCE++ with baseline: group-mean baseline, globally whitened returns, no critic.
    Reinforce,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Sft => "sft",
            StageKind::Rm => "rm",
            StageKind::Ppo => "ppo",
            StageKind::Dpo => "dpo",
            StageKind::Grpo => "grpo",
            StageKind::Rloo => "rloo",
            StageKind::Reinforce => "reinforce",
        }
    }

    /// The reinforcement-learning kinds: they generate from prompts and learn from rewards.
    pub fn is_rl(self) -> bool {
        matches!(
            self,
            StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce
        )
    }
}

/// File formats a dataset may have.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// One JSON object per line (`prompt`/`response`, `prompt`/`chosen`/`rejected`, or `prompt`).
    #[default]
    Jsonl,
    /// Apache Parquet (as Hugging Face Hub datasets are stored): one row per example, string
    /// columns named like JSONL's fields.
    Parquet,
}

/// Column names of a dataset file for the fields a stage reads, where the file's differ
/// (e.g. `{prompt: question, response: answer}`). Unnamed fields keep their own name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub chosen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub rejected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub reference: Option<String>,
    /// A conversation (list of `{role, content}`), rendered with the tokenizer's chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub messages: Option<String>,
}

impl DatasetFields {
    /// The file's column for `field` (prompt, response, chosen, rejected, reference, messages).
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        let named = match field {
            "prompt" => &self.prompt,
            "response" => &self.response,
            "chosen" => &self.chosen,
            "rejected" => &self.rejected,
            "reference" => &self.reference,
            "messages" => &self.messages,
            _ => &None,
        };
        named.as_deref().unwrap_or(field)
    }
}

/// Built-in synthetic tasks, so a demo needs no files.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticTask {
    /// Prompts of words; good responses repeat them (SFT pairs, preference pairs, PPO prompts).
    Copy,
    /// Single-digit additions ("3+4="); good responses give the sum ("7.").
    Arithmetic,
}

/// A built-in synthetic dataset.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyntheticDataset {
    /// Which generator.
    pub task: SyntheticTask,
    /// Number of examples. Default: 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub samples: Option<u32>,
    /// Generator seed. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The stage's data: a file on a mounted volume, or a synthetic generator. Exactly one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Path of the dataset file inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub path: Option<String>,
    /// Format of `path`. Default: parquet for a `.parquet` file, else jsonl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DatasetFormat>,
    /// The file's names for the fields the stage reads, where they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<DatasetFields>,
    /// A built-in generator instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticDataset>,
}

/// Where a model's starting weights come from: an earlier stage's output, or a folder. At most one;
/// when neither is given the base model is used.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Name of an earlier stage (it must be among this stage's `dependsOn`, directly or through them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// A Hugging Face model folder inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub path: Option<String>,
}

/// Which weights each model of the stage starts from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageModels {
    /// The model this stage trains (the actor in PPO). Default: for ppo and dpo, the output of the
    /// one sft stage it depends on (if there is exactly one); otherwise the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<ModelSource>,
    /// RL kinds: a reward model (an `rm` stage or a folder); shorthand for a one-entry `rewards`
    /// list, so not both. Default for ppo without `rewards`: the output of the one rm stage it
    /// depends on (if there is exactly one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<ModelSource>,
    /// PPO only: the critic's starting weights. Default: the first reward model, else `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critic: Option<ModelSource>,
    /// RL kinds and DPO: the frozen reference. Default: the same weights as `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ModelSource>,
}

/// Optimisation settings every kind of stage shares. Defaults depend on the kind (see the README).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingParams {
    /// Peak learning rate (AdamW). Default: sft 2e-5, rm 1e-5, RL kinds 1e-6, dpo 5e-7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub learning_rate: Option<f64>,
    /// Global batch size (examples per optimizer step, all ranks together; for RL kinds,
    /// responses). Default: 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub batch_size: Option<u32>,
    /// Examples per rank per forward pass; batchSize must be a multiple of microBatchSize x world size
    /// (the quotient is the gradient-accumulation count). Default: 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub micro_batch_size: Option<u32>,
    /// Passes over the dataset. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub epochs: Option<u32>,
    /// Stop after this many optimizer steps even if epochs remain. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<u64>,
    /// Longest tokenized prompt + response; longer examples are truncated. Default: 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub max_length: Option<u32>,
    /// Linear warm-up steps. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u32>,
    /// AdamW weight decay, never applied to biases and norm weights (any 1-D weight), nor to
    /// the embeddings unless weightDecayEmbeddings. Default: 0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight_decay: Option<f64>,
    /// Decay the token and position embeddings (and a tied LM head) too. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay_embeddings: Option<bool>,
    /// AdamW's epsilon, added to the root of the second moment; must be above 0. Default: 1e-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub adam_epsilon: Option<f64>,
    /// Gradient-norm clipping; 0 turns it off. Default: 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_grad_norm: Option<f64>,
    /// Seed for initialisation, shuffling and sampling. Default: 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Write a resumable checkpoint every this many steps. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: Option<u32>,
}

/// DPO settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DpoParams {
    /// Inverse temperature of the preference loss. Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub beta: Option<f64>,
    /// Label smoothing (conservative DPO). Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub label_smoothing: Option<f64>,
}

/// One stage of the pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageSpec {
    /// Unique within the job; a DNS label (it names pods and output folders).
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What the stage trains.
    pub kind: StageKind,
    /// Stages that must succeed before this one starts. Default: none; for a ppo stage every sft
    /// and rm stage of the job; for a dpo, grpo, rloo or reinforce stage every sft stage, and
    /// the rm stages its rewards name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Training data.
    pub dataset: DatasetSpec,
    /// Starting weights of the stage's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<StageModels>,
    /// Optimisation settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingParams>,
    /// Where an RL stage's rewards come from; their weighted scores are summed. Default: the
    /// reward model of `models.rewardModel`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<RewardSpec>,
    /// Settings every RL kind shares (ppo, grpo, rloo, reinforce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<RlParams>,
    /// PPO's own settings: the critic and GAE (only for kind ppo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo: Option<PpoParams>,
    /// GRPO's own settings (only for kind grpo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoParams>,
    /// DPO settings (only for kind dpo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoParams>,
    /// Overrides of the job's `parallelism`, field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<ParallelismSpec>,
}
