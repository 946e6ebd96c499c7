//! Llama (`LlamaForCausalLM`, Llama 2 and 3.x, tied embeddings as in Llama 3.2 1B/3B): the
//! shared decoder as it is; `rope_scaling` may be `linear` or `llama3` (rope.rs).
use std::path::Path;

use super::decoder::DecoderSpec;
use super::decoder::spec::HfFields;
use crate::error::Result;

pub fn spec(config: &serde_json::Value, origin: &Path) -> Result<DecoderSpec> {
    HfFields::read(config, origin)?.llama_like(origin, 10_000.0)
}
