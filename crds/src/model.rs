//! The base model every stage starts from, and its tokenizer.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Model family: decides the architecture code and the Hugging Face weight names.
/// More families are added over time; clients must not assume this list is closed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// `GPT2LMHeadModel`.
    Gpt2,
    /// `LlamaForCausalLM` (Llama 2/3 style: RMSNorm, rotary embeddings, SwiGLU, GQA).
    Llama,
}

/// How weights are initialised when no checkpoint is given.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    /// Random weights with the inline `architecture` (demos and tests need no files).
    Random,
}

/// Floating-point type the weights are stored in.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
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
    /// Key/value heads (Llama grouped-query attention; must divide `numHeads`). Default: `numHeads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_kv_heads: Option<u32>,
    /// MLP inner width. Default: 4 x hiddenSize (GPT-2), 8/3 x hiddenSize rounded up to 64 (Llama).
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
    /// Model family.
    pub family: ModelFamily,
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
    /// Weight dtype of the checkpoints written. Default: fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<Dtype>,
    /// Tokenizer. Default: the model folder's tokenizer files, or builtin gpt2 for `init: random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSpec>,
}
