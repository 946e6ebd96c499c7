//! How a stage is spread over GPUs and which memory savers it uses.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Data-parallel strategy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Replicated model, bucketed gradient all-reduce.
    #[default]
    Ddp,
    /// ZeRO stage 1: optimizer state sharded across ranks.
    Zero1,
    /// ZeRO stage 2: optimizer state and gradients sharded.
    Zero2,
}

/// What is kept in CPU memory instead of GPU memory.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum Offload {
    #[default]
    None,
    /// Optimizer state and fp32 master weights; the optimizer step runs on the CPU.
    Optimizer,
    /// Reference and reward models between experience-making rounds (PPO).
    InferenceModels,
    /// Both of the above.
    All,
}

/// Numeric precision of weights and activations during training.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on GPUs, fp32 on CPUs (whose bf16 arithmetic is emulated and slow).
    #[default]
    Auto,
    Fp32,
    /// bf16 weights and activations with fp32 master weights.
    Bf16,
    /// fp16 with dynamic loss scaling.
    Fp16,
}

/// Low-rank adapters: the base weights stay frozen and shared.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoraSpec {
    /// Adapter rank. Default: 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub rank: Option<u32>,
    /// Scaling numerator (scale = alpha / rank). Default: 2 x rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dropout: Option<f64>,
    /// Hugging Face module names to adapt. Default: gpt2 [c_attn, c_proj, c_fc];
    /// llama [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_modules: Option<Vec<String>>,
}

/// Parallelism and memory settings. At job level they are the defaults of every stage; a stage's
/// own `parallelism` overrides them field by field.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParallelismSpec {
    /// Pods in the gang (one per node). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub nodes: Option<u32>,
    /// Trainer processes per pod, one per GPU; sets the pod's `nvidia.com/gpu`. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub gpus_per_node: Option<u32>,
    /// Data-parallel strategy. Default: ddp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// CPU offload. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<Offload>,
    /// LoRA adapters; absent trains all weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// Training precision. Default: bf16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Recompute each transformer block's activations in the backward pass. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_checkpointing: Option<bool>,
}
