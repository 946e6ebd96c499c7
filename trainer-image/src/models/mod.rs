//! Model families, one file each, with Hugging Face weight names by construction.
pub mod common;
pub mod gpt2;
pub mod hf;
pub mod llama;

use std::path::Path;

use tch::{Device, Tensor, nn};

use crate::error::{Error, Result};

/// What every family offers the algorithms: logits for a batch, and saving as an HF folder.
pub trait CausalLm: std::fmt::Debug {
    /// Final hidden states (B, T, C) (heads for values and rewards read these).
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor;
    /// Next-token logits (B, T, V).
    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor;
    /// Writes `vs` (this model's variables) as a Hugging Face folder.
    fn save(&self, vs: &nn::VarStore, dir: &Path) -> Result<()>;
}

/// Loads any supported HF causal-LM folder, choosing the family from config.json's model_type.
pub fn load_causal_lm(dir: &Path, device: Device) -> Result<(nn::VarStore, Box<dyn CausalLm>)> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        model_type: Option<String>,
    }
    let kind: ModelType = hf::read_config(dir)?;
    match kind.model_type.as_deref() {
        Some("gpt2") => gpt2::Gpt2::load(dir, device).map(|(vs, m)| (vs, Box::new(m) as Box<dyn CausalLm>)),
        Some("llama") => llama::Llama::load(dir, device).map(|(vs, m)| (vs, Box::new(m) as Box<dyn CausalLm>)),
        other => Err(Error::invalid(
            dir.join(hf::CONFIG_FILE),
            format!("model_type {other:?} is not supported (gpt2, llama)"),
        )),
    }
}
