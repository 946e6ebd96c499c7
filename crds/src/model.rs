//! The base model every stage starts from, and its tokenizer.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Model family: decides the architecture code and the Hugging Face weight names. A model
/// folder's family is its config.json `model_type`; naming it here only checks that they agree.
/// More families are added over time; clients must not assume this list is closed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelFamily {
    /// `GPT2LMHeadModel`.
    #[serde(rename = "gpt2")]
    Gpt2,
    /// `LlamaForCausalLM` (Llama 2/3.x: RMSNorm, rotary embeddings, SwiGLU, GQA, rope scaling).
    #[serde(rename = "llama")]
    Llama,
    /// `MistralForCausalLM` (Llama's block with a sliding attention window).
    #[serde(rename = "mistral")]
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen2 and Qwen2.5: biases on q, k, v).
    #[serde(rename = "qwen2")]
    Qwen2,
    /// `Qwen3ForCausalLM` (per-head q/k norms).
    #[serde(rename = "qwen3")]
    Qwen3,
    /// `Gemma2ForCausalLM`.
    #[serde(rename = "gemma2")]
    Gemma2,
    /// `Gemma3ForCausalLM` (Gemma 3's text model).
    #[serde(rename = "gemma3_text")]
    Gemma3Text,
    /// `OPTForCausalLM` (learned positions, ReLU MLP, pre- or post-LN blocks).
    #[serde(rename = "opt")]
    Opt,
    /// `BloomForCausalLM` (ALiBi instead of position embeddings, fused query_key_value).
    #[serde(rename = "bloom")]
    Bloom,
}

impl ModelFamily {
    pub const ALL: [ModelFamily; 9] = [
        Self::Gpt2,
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen3,
        Self::Gemma2,
        Self::Gemma3Text,
        Self::Opt,
        Self::Bloom,
    ];

    /// The `model_type` of the family's config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3Text => "gemma3_text",
            Self::Opt => "opt",
            Self::Bloom => "bloom",
        }
    }

    /// Whether the family has rotary embeddings and grouped-query attention (all but GPT-2,
    /// OPT and BLOOM).
    pub fn is_rotary(self) -> bool {
        !matches!(self, Self::Gpt2 | Self::Opt | Self::Bloom)
    }
}

/// How weights are initialised when no checkpoint is given.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    /// Random weights with the inline `architecture` (demos and tests need no files).
    Random,
}

/// Floating-point type the saved weights are stored in.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Bf16,
    Fp16,
}

/// Inline architecture for `init: random` (Hugging Face config names in camelCase).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Architecture {
    /// Vocabulary size; must cover the tokenizer's ids.
    #[schemars(range(min = 1))]
    pub vocab_size: u32,
    /// Width of the residual stream.
    #[schemars(range(min = 1))]
    pub hidden_size: u32,
    /// Number of transformer blocks.
    #[schemars(range(min = 1))]
    pub num_layers: u32,
    /// Attention heads; must divide `hiddenSize`.
    #[schemars(range(min = 1))]
    pub num_heads: u32,
    /// Key/value heads (grouped-query attention, the rotary families only: not gpt2, opt or
    /// bloom; must divide `numHeads`).
    /// Default: `numHeads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_kv_heads: Option<u32>,
    /// MLP inner width. Default: 4 x hiddenSize (gpt2, opt; bloom's is always that), 8/3 x
    /// hiddenSize rounded up to 64 (the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub intermediate_size: Option<u32>,
    /// Longest sequence (prompt + response) the model accepts.
    #[schemars(range(min = 1))]
    pub max_positions: u32,
}

/// Where the tokenizer comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenizerSpec {
    /// A folder holding `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`.
    /// Default: the model's `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A tokenizer built into the trainer image; the default when the model has no `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinTokenizer>,
}

/// Tokenizers shipped inside the trainer image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinTokenizer {
    /// GPT-2's byte-level BPE (50257 ids).
    Gpt2,
}

/// The base model: a Hugging Face folder on a mounted volume, or random weights.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model family. Required with `init: random`; for a `path` it defaults to the folder's
    /// config.json `model_type`, and when set the trainer checks that they agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,
    /// Hugging Face model folder (config.json + safetensors) inside the pod. Exclusive with `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub path: Option<String>,
    /// `random`: start from random weights with `architecture`. Exclusive with `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<ModelInit>,
    /// Architecture for `init: random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// Weight dtype of the Hugging Face folders the stages save. Default: the base folder's
    /// (config.json `torch_dtype`), fp32 for `init: random`. Training computes in
    /// `parallelism.precision` whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Dtype>,
    /// Tokenizer. Default: the model folder's tokenizer files, or builtin gpt2 for `init: random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSpec>,
}
