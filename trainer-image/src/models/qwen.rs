//! Qwen2/2.5 (`Qwen2ForCausalLM`: biases on q, k and v only) and Qwen3 (`Qwen3ForCausalLM`: an
//! RMSNorm on each query and key head before the rotation). Both slide a window over the
//! blocks from `max_window_layers` on when `use_sliding_window` is set.
use std::path::Path;

use super::decoder::DecoderSpec;
use super::decoder::spec::{HfFields, LayerKind};
use crate::error::Result;

/// Which of the two generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Qwen2,
    Qwen3,
}

pub fn spec(
    config: &serde_json::Value,
    origin: &Path,
    generation: Generation,
) -> Result<DecoderSpec> {
    let mut fields = HfFields::read(config, origin)?;
    if generation == Generation::Qwen2 {
        fields.attention_bias = Some(false);
    }
    let mut spec = fields.llama_like(origin, 10_000.0)?;
    match generation {
        Generation::Qwen2 => spec.qkv_bias = true,
        Generation::Qwen3 => spec.qk_norm = true,
    }
    if fields.use_sliding_window.unwrap_or(false) && fields.sliding_window.is_some() {
        let from = config["max_window_layers"].as_i64().unwrap_or(28); // Qwen2Config and Qwen3Config default
        let kinds = fields.layer_kinds(origin, |i| {
            if i >= from {
                LayerKind::Sliding
            } else {
                LayerKind::Full
            }
        })?;
        fields.apply_windows(&mut spec, &kinds, origin)?;
    }
    Ok(spec)
}
