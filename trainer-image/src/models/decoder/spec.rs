//! What the shared decoder is built from: [`DecoderSpec`], resolved from a family's config.json.
//! [`HfFields`] holds the config.json fields the rotary families (Llama, Qwen, Mistral, Gemma)
//! share under the same names; each family file turns them into a spec with its own defaults.
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::rope::{Rope, RopeScaling};

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen, Mistral).
    Silu,
    /// GeGLU with GELU's tanh approximation (Gemma).
    GeluTanh,
}

impl Activation {
    /// HF's name (`hidden_act` / `hidden_activation`); others are refused, naming `field`.
    pub fn from_hf(name: &str, field: &str, origin: &Path) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            other => Err(Error::invalid(
                origin,
                format!("{field} {other:?} is not supported (silu, gelu_pytorch_tanh)"),
            )),
        }
    }
}

/// One block's attention: its sliding window (None: every earlier position) and which of the
/// spec's rotary embeddings it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerAttention {
    pub window: Option<i64>,
    pub rope: usize,
}

/// Everything that differs between the rotary decoder families, resolved.
#[derive(Clone, Debug)]
pub struct DecoderSpec {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub norm_eps: f64,
    /// Gemma's RMSNorm scales by (1 + w) in fp32; the others by w after casting back.
    pub norm_plus_one: bool,
    /// Biases of the q, k and v projections (Qwen2 has them, its o_proj not).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of each query and key head before the rotation (Qwen3, Gemma 3).
    pub qk_norm: bool,
    pub activation: Activation,
    /// Gemma 2/3: the attention and MLP outputs are normed too (post_attention_layernorm after
    /// attention, pre_/post_feedforward_layernorm around the MLP).
    pub sandwich_norms: bool,
    /// Gemma: token embeddings are multiplied by sqrt(hidden_size).
    pub scale_embeddings: bool,
    /// Multiplies q k^T: 1/sqrt(head_dim), or Gemma's query_pre_attn_scalar^-1/2.
    pub attention_scale: f64,
    /// cap * tanh(scores / cap) before the softmax (Gemma 2).
    pub attention_softcap: Option<f64>,
    /// cap * tanh(logits / cap) on the LM head's output (Gemma 2).
    pub final_softcap: Option<f64>,
    pub tie_word_embeddings: bool,
    /// The rotary embeddings in use (Gemma 3: global, then local for sliding layers).
    pub ropes: Vec<Rope>,
    /// One entry per block.
    pub layers: Vec<LayerAttention>,
}

impl DecoderSpec {
    /// The distinct sliding windows of the blocks (None first when any block attends fully).
    pub fn windows(&self) -> Vec<Option<i64>> {
        let mut windows: Vec<Option<i64>> = self.layers.iter().map(|l| l.window).collect();
        windows.sort();
        windows.dedup();
        windows
    }
}

/// config.json fields shared by name across the rotary families; defaults are the family's
/// business, so everything that has one is optional here.
#[derive(Clone, Debug, Deserialize)]
pub struct HfFields {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: Option<i64>,
    pub head_dim: Option<i64>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub sliding_window: Option<i64>,
    pub use_sliding_window: Option<bool>,
    pub layer_types: Option<Vec<String>>,
}

/// A config.json field that may be absent (the family's `default` applies) or null (None).
pub fn nullable<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
    field: &str,
    default: Option<T>,
    origin: &Path,
) -> Result<Option<T>> {
    match config.get(field) {
        None => Ok(default),
        Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::invalid(origin, format!("{field}: {e}"))),
    }
}

/// Which blocks attend through a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Full,
    Sliding,
}

impl HfFields {
    /// The shared fields of `config` (read from `origin`).
    pub fn read(config: &serde_json::Value, origin: &Path) -> Result<Self> {
        serde_json::from_value(config.clone()).map_err(|e| Error::invalid(origin, e.to_string()))
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `layer_types` when the config lists them (each "full_attention" or
    /// "sliding_attention"), else `default(layer index)`.
    pub fn layer_kinds(
        &self,
        origin: &Path,
        default: impl Fn(i64) -> LayerKind,
    ) -> Result<Vec<LayerKind>> {
        let Some(types) = &self.layer_types else {
            return Ok((0..self.num_hidden_layers).map(default).collect());
        };
        if types.len() as i64 != self.num_hidden_layers {
            return Err(Error::invalid(
                origin,
                format!(
                    "layer_types has {} entries for num_hidden_layers {}",
                    types.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(LayerKind::Full),
                "sliding_attention" => Ok(LayerKind::Sliding),
                other => Err(Error::invalid(
                    origin,
                    format!("layer_types entry {other:?} is not supported (full_attention, sliding_attention)"),
                )),
            })
            .collect()
    }

    /// The rotary embedding with `theta` and this config's `rope_scaling`.
    pub fn rope(&self, theta: f64, origin: &Path) -> Result<Rope> {
        Ok(Rope {
            theta,
            head_dim: self.head_dim(),
            scaling: RopeScaling::from_config(self.rope_scaling.as_ref(), origin)?,
        })
    }

    /// Checks the shapes every family needs: heads divide into key/value groups, an even head
    /// width for the rotation, positive sizes.
    pub fn check_shapes(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(origin, m));
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v <= 0 {
                return bad(format!("{field} must be positive, not {v}"));
            }
        }
        if self.kv_heads() <= 0 || self.num_attention_heads % self.kv_heads() != 0 {
            return bad(format!(
                "num_key_value_heads {} must divide num_attention_heads {}",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        if self.head_dim() <= 0 || self.head_dim() % 2 != 0 {
            return bad(format!(
                "head_dim {} must be positive and even for rotary embeddings",
                self.head_dim()
            ));
        }
        if let Some(w) = self.sliding_window
            && w <= 0
        {
            return bad(format!("sliding_window must be positive, not {w}"));
        }
        Ok(())
    }

    /// A spec with Llama's block (plain RMSNorm, SwiGLU, no soft-caps, every block full
    /// attention with the one rotary embedding) that families then adjust.
    pub fn llama_like(&self, origin: &Path, default_theta: f64) -> Result<DecoderSpec> {
        self.check_shapes(origin)?;
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
            norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            norm_plus_one: false,
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            qk_norm: false,
            activation: Activation::from_hf(act, "hidden_act", origin)?,
            sandwich_norms: false,
            scale_embeddings: false,
            attention_scale: (self.head_dim() as f64).powf(-0.5),
            attention_softcap: None,
            final_softcap: None,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            ropes: vec![self.rope(self.rope_theta.unwrap_or(default_theta), origin)?],
            layers: vec![
                LayerAttention {
                    window: None,
                    rope: 0
                };
                self.num_hidden_layers as usize
            ],
        })
    }

    /// Sets each block's window from `kinds`: sliding blocks get `sliding_window`, which must
    /// then be set.
    pub fn apply_windows(
        &self,
        spec: &mut DecoderSpec,
        kinds: &[LayerKind],
        origin: &Path,
    ) -> Result<()> {
        for (layer, kind) in spec.layers.iter_mut().zip(kinds) {
            if *kind == LayerKind::Sliding {
                layer.window = Some(self.sliding_window.ok_or_else(|| {
                    Error::invalid(origin, "sliding_attention layers need sliding_window")
                })?);
            }
        }
        Ok(())
    }
}
