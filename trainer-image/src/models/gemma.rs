//! Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3's text model (`Gemma3ForCausalLM`, model_type
//! `gemma3_text`): embeddings scaled by sqrt(hidden), (1 + w) RMSNorms also after attention and
//! around the MLP, GeGLU, queries scaled by query_pre_attn_scalar^-1/2, sliding and global blocks
//! alternating (`layer_types`). Gemma 2 soft-caps attention scores and final logits; Gemma 3 norms
//! each query and key head and gives sliding blocks their own rotary base
//! (`rope_local_base_freq`, unscaled). Multimodal `gemma3` folders are refused.
use std::path::Path;

use super::decoder::DecoderSpec;
use super::decoder::spec::{Activation, HfFields, LayerKind, nullable};
use crate::error::{Error, Result};
use crate::models::rope::{Rope, RopeScaling};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Gemma2,
    Gemma3,
}

/// Gemma's defaults that differ by generation (HF's Gemma2Config / Gemma3TextConfig).
struct Defaults {
    rope_theta: f64,
    attention_softcap: Option<f64>,
    final_softcap: Option<f64>,
    /// Every n-th block (1-based) attends globally.
    global_every: i64,
}

impl Generation {
    fn defaults(self) -> Defaults {
        match self {
            Self::Gemma2 => Defaults {
                rope_theta: 10_000.0,
                attention_softcap: Some(50.0),
                final_softcap: Some(30.0),
                global_every: 2,
            },
            Self::Gemma3 => Defaults {
                rope_theta: 1_000_000.0,
                attention_softcap: None,
                final_softcap: None,
                global_every: 6,
            },
        }
    }
}

pub fn spec(
    config: &serde_json::Value,
    origin: &Path,
    generation: Generation,
) -> Result<DecoderSpec> {
    let d = generation.defaults();
    if config["use_bidirectional_attention"].as_bool() == Some(true) {
        return Err(Error::invalid(
            origin,
            "use_bidirectional_attention is not supported (a causal LM is)",
        ));
    }
    let mut fields = HfFields::read(config, origin)?;
    fields.head_dim = Some(fields.head_dim.unwrap_or(256));
    fields.tie_word_embeddings = Some(fields.tie_word_embeddings.unwrap_or(true));
    fields.sliding_window = nullable(config, "sliding_window", Some(4096), origin)?;
    let act = fields
        .hidden_activation
        .take()
        .unwrap_or_else(|| "gelu_pytorch_tanh".into());
    fields.hidden_act = None;
    let mut spec = fields.llama_like(origin, d.rope_theta)?;
    spec.activation = Activation::from_hf(&act, "hidden_activation", origin)?;
    spec.norm_plus_one = true;
    spec.sandwich_norms = true;
    spec.scale_embeddings = true;
    let scalar: f64 = nullable(config, "query_pre_attn_scalar", Some(256.0), origin)?
        .ok_or_else(|| Error::invalid(origin, "query_pre_attn_scalar must be a number"))?;
    spec.attention_scale = scalar.powf(-0.5);
    spec.attention_softcap = nullable(
        config,
        "attn_logit_softcapping",
        d.attention_softcap,
        origin,
    )?;
    spec.final_softcap = nullable(config, "final_logit_softcapping", d.final_softcap, origin)?;
    // Configs written before `layer_types` existed give Gemma 3's period as
    // `sliding_window_pattern` (transformers reads it the same way).
    let global_every = match generation {
        Generation::Gemma3 => config["sliding_window_pattern"]
            .as_i64()
            .filter(|n| *n > 0)
            .unwrap_or(d.global_every),
        Generation::Gemma2 => d.global_every,
    };
    let kinds = fields.layer_kinds(origin, |i| {
        if (i + 1) % global_every == 0 {
            LayerKind::Full
        } else {
            LayerKind::Sliding
        }
    })?;
    fields.apply_windows(&mut spec, &kinds, origin)?;
    if generation == Generation::Gemma3 {
        spec.qk_norm = true;
        let local_theta = config["rope_local_base_freq"].as_f64().unwrap_or(10_000.0);
        spec.ropes.push(Rope {
            theta: local_theta,
            head_dim: spec.head_dim,
            scaling: RopeScaling::None,
        });
        for layer in spec.layers.iter_mut().filter(|l| l.window.is_some()) {
            layer.rope = 1;
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma3_without_layer_types_takes_its_period_from_sliding_window_pattern() {
        let config = serde_json::json!({
            "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 4,
            "num_attention_heads": 2, "head_dim": 4, "sliding_window": 3, "sliding_window_pattern": 2,
        });
        let spec = spec(&config, Path::new("config.json"), Generation::Gemma3).unwrap();
        let windows: Vec<Option<i64>> = spec.layers.iter().map(|l| l.window).collect();
        assert_eq!(windows, [Some(3), None, Some(3), None]);
        let ropes: Vec<usize> = spec.layers.iter().map(|l| l.rope).collect();
        assert_eq!(
            ropes,
            [1, 0, 1, 0],
            "sliding blocks use the local rotary base"
        );
    }
}
