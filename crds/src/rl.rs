//! The settings of the reinforcement-learning stage kinds (`ppo`, `grpo`, `rloo`, `reinforce`):
//! what they share (`rl:`), what only one has (`ppo:`, `grpo:`), and where rewards come from
//! (`rewards:`). The kinds differ only in how advantages are computed and whether a critic
//! exists; everything else is one experience/learning loop in the trainer.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DatasetSpec, ModelSource};

/// Sampling settings for experience making.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerationParams {
    /// Most tokens generated per prompt. Default: 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: Option<u32>,
    /// Sampling temperature; log-probs are taken at this temperature too. Default: 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub temperature: Option<f64>,
    /// Keep the k most likely tokens; 0 keeps all. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Nucleus sampling mass. Default: 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f64>,
}

/// KL estimator between the policy and the reference.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log p - log q.
    #[default]
    K1,
    /// (q/p - 1) - log(q/p): unbiased and always positive.
    K3,
}

/// Settings every RL kind shares.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RlParams {
    /// KL coefficient to the reference (initial value under targetKl). Default: 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub kl_coef: Option<f64>,
    /// KL estimator. Default: k1 when the KL is in the reward, k3 when it is in the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_estimator: Option<KlEstimator>,
    /// Penalise KL per token in the reward (InstructGPT) rather than as a loss term (GRPO).
    /// Default: false for grpo, true for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_in_reward: Option<bool>,
    /// Adaptive KL controller target; absent keeps klCoef fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub target_kl: Option<f64>,
    /// Policy ratio clip range: the ratio stays within [1 - clipRange, 1 + clipRangeHigh].
    /// Default: 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub clip_range: Option<f64>,
    /// Upper clip range (DAPO's clip-higher, arXiv:2503.14476, uses 0.28). Default: clipRange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub clip_range_high: Option<f64>,
    /// Optimisation passes over each round's experience, micro-batches reshuffled each pass.
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub update_epochs: Option<u32>,
    /// Prompts per experience-making round, all ranks together; each is answered groupSize
    /// times. Default: training.batchSize / groupSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rollout_batch_size: Option<u32>,
    /// Responses sampled per prompt. Default: 4 for grpo and rloo (at least 2), 1 for ppo and
    /// reinforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub group_size: Option<u32>,
    /// Clip the summed reward to [-rewardClip, rewardClip]; 0 turns it off. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub reward_clip: Option<f64>,
    /// Entropy bonus coefficient. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub entropy_coef: Option<f64>,
    /// Subtracted from the reward of a response that never produced EOS within maxNewTokens.
    /// Default: 0 (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub missing_eos_penalty: Option<f64>,
    /// Pre-training (ptx) loss coefficient; needs `ptxDataset`. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub ptx_coef: Option<f64>,
    /// Data for the ptx loss: prompt/response examples like an SFT dataset; the loss is the SFT
    /// loss on their responses, added to the actor's loss times `ptxCoef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptx_dataset: Option<DatasetSpec>,
    /// Sampling settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationParams>,
}

/// What only PPO has: the critic and generalised advantage estimation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PpoParams {
    /// Value clip range. Default: 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub value_clip_range: Option<f64>,
    /// GAE discount. Default: 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub gamma: Option<f64>,
    /// GAE lambda. Default: 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lambda: Option<f64>,
    /// Critic learning rate. Default: 10 x the actor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub critic_learning_rate: Option<f64>,
}

/// How per-token policy losses become one number.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum LossAggregation {
    /// Mean over each response's tokens, then over responses (GRPO, arXiv:2402.03300).
    #[default]
    SequenceMean,
    /// Mean over all tokens of the batch, so long responses weigh by their length (DAPO,
    /// arXiv:2503.14476; Dr. GRPO, arXiv:2503.20783).
    TokenMean,
}

/// What only GRPO has.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpoParams {
    /// Divide each group's centred rewards by the group's standard deviation; false is
    /// Dr. GRPO's unbiased variant (arXiv:2503.20783). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_by_std: Option<bool>,
    /// Default: sequenceMean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_aggregation: Option<LossAggregation>,
    /// Leave out of the loss every group whose rewards are all equal (they carry no signal;
    /// DAPO's dynamic sampling, arXiv:2503.14476, without refilling the batch). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_sampling: Option<bool>,
}

/// Built-in reward functions (README: Algorithms and rewards).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RewardFunction {
    /// 1 when the response's answer equals the dataset row's `reference`, else 0.
    ExactAnswer,
    /// 1 when the response matches the entry's `pattern` (a regular expression), else 0.
    Format,
    /// A penalty in [-1, 0] growing with the response's tokens beyond `targetTokens`.
    Length,
}

/// A remote reward service (README: Algorithms and rewards has the request and answer schemas).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpReward {
    /// `http://host:port/path`, reachable from the trainer pods.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Deadline of one request. Default: 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub timeout_seconds: Option<f64>,
}

/// One source of reward; a stage's scores are the weighted sum of its sources. Exactly one of
/// `model`, `function` and `http`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RewardSpec {
    /// A reward model: an `rm` stage or a folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSource>,
    /// A built-in function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<RewardFunction>,
    /// A remote reward service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpReward>,
    /// Multiplies this source's scores. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// `format` only, required: the regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `length` only: responses up to this many tokens are not penalised. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tokens: Option<u32>,
}
