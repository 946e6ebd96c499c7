//! Mistral (`MistralForCausalLM`): Llama's block without biases, every block attending through
//! `sliding_window` positions unless it is null.
use std::path::Path;

use super::decoder::DecoderSpec;
use super::decoder::spec::{HfFields, LayerKind, nullable};
use crate::error::Result;

/// MistralConfig's default window.
const SLIDING_WINDOW: i64 = 4096;

pub fn spec(config: &serde_json::Value, origin: &Path) -> Result<DecoderSpec> {
    let mut fields = HfFields::read(config, origin)?;
    fields.sliding_window = nullable(config, "sliding_window", Some(SLIDING_WINDOW), origin)?;
    fields.attention_bias = Some(false);
    let mut spec = fields.llama_like(origin, 10_000.0)?;
    let kind = match fields.sliding_window {
        Some(_) => LayerKind::Sliding,
        None => LayerKind::Full,
    };
    let kinds = vec![kind; spec.layers.len()];
    fields.apply_windows(&mut spec, &kinds, origin)?;
    Ok(spec)
}
