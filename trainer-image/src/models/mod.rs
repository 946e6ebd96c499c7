//! Model families, one file each, with Hugging Face weight names by construction.
pub mod common;
pub mod gpt2;
pub mod heads;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod projection;
pub mod recompute;

use std::path::Path;

use tch::{Device, Tensor, nn};

pub use common::KvCache;

use crate::error::{Error, Result};

/// What every family offers the algorithms: a forward pass with a KV cache, the LM head, and
/// saving as an HF folder. Full-sequence calls are the same forward with a fresh cache.
pub trait CausalLm: std::fmt::Debug {
    /// Final hidden states (B, T, C) of `input_ids` (B, T); `attention_mask` (B, S) covers the
    /// cached positions and the new ones (1 = token, 0 = padding). Appends to `cache`.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor;
    /// Next-token logits (B, T, V) of hidden states.
    fn lm_head(&self, hidden: &Tensor) -> Tensor;
    /// The config.json of a saved folder (HF names, `architectures` the causal-LM class).
    fn hf_config(&self) -> serde_json::Value;
    /// Width of the hidden states (what value and reward heads read).
    fn hidden_size(&self) -> i64;
    /// The blocks' linear projections (where LoRA adapters go).
    fn projections(&self) -> Vec<&projection::Projection>;
    /// Turns activation checkpointing of training forwards on or off (recompute.rs).
    fn set_checkpointing(&self, on: bool);
    /// Completes the backward pass of checkpointed forwards; call right after `loss.backward()`.
    fn finish_backward(&self);

    /// Writes `vs` (this model's variables) as a plain Hugging Face folder: LoRA adapters are
    /// merged into their weights.
    fn save(&self, vs: &nn::VarStore, dir: &Path) -> Result<()> {
        hf::write_folder(
            dir,
            &self.hf_config(),
            &lora::merged_tensors(vs, &self.projections()),
        )
    }

    /// Switches every LoRA adapter on or off (off: the base model, e.g. PPO's reference).
    fn set_adapters(&self, on: bool) {
        for p in self.projections() {
            p.set_adapter_enabled(on);
        }
    }

    /// Final hidden states (B, T, C) of a whole sequence (heads for values and rewards read these).
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        let ones;
        let mask = match attention_mask {
            Some(m) => m,
            None => {
                ones = input_ids.ones_like();
                &ones
            }
        };
        self.forward(input_ids, mask, &mut KvCache::default())
    }

    /// Next-token logits (B, T, V) of a whole sequence, in fp32 whatever the weights' dtype.
    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        self.lm_head(&self.hidden_states(input_ids, attention_mask))
            .to_kind(tch::Kind::Float)
    }
}

/// Loads any supported HF causal-LM folder, choosing the family from config.json's model_type.
pub fn load_causal_lm(dir: &Path, device: Device) -> Result<(nn::VarStore, Box<dyn CausalLm>)> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        model_type: Option<String>,
    }
    let kind: ModelType = hf::read_config(dir)?;
    match kind.model_type.as_deref() {
        Some("gpt2") => {
            gpt2::Gpt2::load(dir, device).map(|(vs, m)| (vs, Box::new(m) as Box<dyn CausalLm>))
        }
        Some("llama") => {
            llama::Llama::load(dir, device).map(|(vs, m)| (vs, Box::new(m) as Box<dyn CausalLm>))
        }
        other => Err(Error::invalid(
            dir.join(hf::CONFIG_FILE),
            format!("model_type {other:?} is not supported (gpt2, llama)"),
        )),
    }
}

/// A randomly initialised model of `family` with the inline architecture of an RLHFJob.
pub fn random_causal_lm(
    family: rlhf_spec::ModelFamily,
    arch: &rlhf_spec::Architecture,
    vs: &nn::VarStore,
) -> Result<Box<dyn CausalLm>> {
    let (vocab, hidden, layers, heads) = (
        i64::from(arch.vocab_size),
        i64::from(arch.hidden_size),
        i64::from(arch.num_layers),
        i64::from(arch.num_heads),
    );
    let json = match family {
        rlhf_spec::ModelFamily::Gpt2 => serde_json::json!({
            "vocab_size": vocab, "n_positions": arch.max_positions, "n_embd": hidden, "n_layer": layers, "n_head": heads,
            "n_inner": arch.intermediate_size,
        }),
        rlhf_spec::ModelFamily::Llama => serde_json::json!({
            "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": arch.num_kv_heads, "max_position_embeddings": arch.max_positions,
            // Llama's default MLP width: 8/3 x hidden, rounded up to a multiple of 64.
            "intermediate_size": arch.intermediate_size.map(i64::from).unwrap_or((8 * hidden / 3 + 63) / 64 * 64),
        }),
    };
    let bad = |e: serde_json::Error| Error::invalid("<model.architecture>", e.to_string());
    Ok(match family {
        rlhf_spec::ModelFamily::Gpt2 => Box::new(gpt2::Gpt2::new(
            vs,
            serde_json::from_value(json).map_err(bad)?,
        )?),
        rlhf_spec::ModelFamily::Llama => Box::new(llama::Llama::new(
            vs,
            serde_json::from_value(json).map_err(bad)?,
        )?),
    })
}

/// Number of weights in `vs` (tied weights once): the N of the FLOP estimates (README).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}
