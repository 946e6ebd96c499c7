//! BLOOM (`BloomForCausalLM`), read top to bottom: config -> ALiBi -> attention -> MLP -> block
//! -> model. Variables carry Hugging Face names by construction (`transformer.h.0.
//! self_attention.query_key_value.weight`; linear weights are nn.Linear's [out, in]). There are
//! no position embeddings: ALiBi adds a per-head slope times the key's position to the scores.
//! The token embedding is normed before the first block; the LM head is the token embedding
//! unless the config unties them.
use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use super::projection::Projection;
use super::recompute::Recompute;
use super::{CausalLm, KvCache, common, hf};
use crate::error::{Error, Result};

/// HF's `BloomConfig`, resolved (its defaults where config.json says nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct BloomConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub layers: i64,
    pub heads: i64,
    pub layer_norm_epsilon: f64,
    /// `apply_residual_connection_post_layernorm`: the residual around attention and MLP starts
    /// from the normed input instead of the input.
    pub residual_from_norm: bool,
    pub tie_word_embeddings: bool,
    /// Standard deviation of random weights (`initializer_range`).
    pub init_std: f64,
}

/// config.json as written. HF takes some fields under two names; the second listed wins when
/// both are there, as it does in transformers.
#[derive(Deserialize)]
struct Fields {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    n_embed: Option<i64>,
    n_layer: Option<i64>,
    num_hidden_layers: Option<i64>,
    n_head: Option<i64>,
    num_attention_heads: Option<i64>,
    layer_norm_epsilon: Option<f64>,
    apply_residual_connection_post_layernorm: Option<bool>,
    tie_word_embeddings: Option<bool>,
    initializer_range: Option<f64>,
}

impl BloomConfig {
    /// The config.json `config` (read from `origin`), checked.
    pub fn read(config: &serde_json::Value, origin: &Path) -> Result<Self> {
        let f: Fields = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid(origin, e.to_string()))?;
        let parsed = Self {
            vocab_size: f.vocab_size.unwrap_or(250880),
            hidden_size: f.n_embed.or(f.hidden_size).unwrap_or(64),
            layers: f.num_hidden_layers.or(f.n_layer).unwrap_or(2),
            heads: f.num_attention_heads.or(f.n_head).unwrap_or(8),
            layer_norm_epsilon: f.layer_norm_epsilon.unwrap_or(1e-5),
            residual_from_norm: f.apply_residual_connection_post_layernorm.unwrap_or(false),
            tie_word_embeddings: f.tie_word_embeddings.unwrap_or(true),
            init_std: f.initializer_range.unwrap_or(0.02),
        };
        parsed.check(origin)?;
        Ok(parsed)
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(origin, m));
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("n_layer", self.layers),
        ] {
            if v <= 0 {
                return bad(format!("{field} must be positive, not {v}"));
            }
        }
        if self.heads <= 0 || self.hidden_size % self.heads != 0 {
            return bad(format!(
                "n_head {} does not divide hidden_size {}",
                self.heads, self.hidden_size
            ));
        }
        Ok(())
    }

    fn layer_norm(&self, p: nn::Path) -> nn::LayerNorm {
        common::layer_norm(p, self.hidden_size, self.layer_norm_epsilon, true)
    }
}

/// ALiBi's slope per head: with n the largest power of two not above `heads`, 2^(-8i/n) for
/// i = 1..=n; further heads take the odd-numbered slopes of the 2n-head series, 2^(-4i/n) for
/// i = 1, 3, 5...
pub fn alibi_slopes(heads: i64) -> Vec<f32> {
    let n = 1i64 << (63 - heads.max(1).leading_zeros());
    let slope = |exponent: f64| 2f64.powf(exponent) as f32;
    let base = (1..=n).map(|i| slope(-8.0 * i as f64 / n as f64));
    let extra = (0..heads - n).map(|j| slope(-4.0 * (2 * j + 1) as f64 / n as f64));
    base.chain(extra).collect()
}

/// ALiBi's bias (B, nh, 1, S) for `attention_mask` (B, S): slope x key position, positions
/// counting real tokens only (as HF counts them, so left padding matches). Softmax ignores a
/// shift per query, so the key's position alone gives the distance penalty.
fn alibi(slopes: &[f32], attention_mask: &Tensor) -> Tensor {
    let (b, s) = attention_mask.size2().expect("attention_mask is (B, S)");
    let m = attention_mask.to_kind(Kind::Int64);
    let positions = ((m.cumsum(1, Kind::Int64) - 1) * &m).to_kind(Kind::Float);
    let slopes = Tensor::from_slice(slopes).to_device(attention_mask.device());
    slopes.view([1, -1, 1, 1]) * positions.view([b, 1, 1, s])
}

#[derive(Debug)]
struct Attention {
    query_key_value: Projection,
    dense: Projection,
    heads: i64,
}

impl Attention {
    /// `mask` is (B, 1, T, S) with true where attention is allowed, `alibi` (B, nh, 1, S);
    /// `cache` holds earlier positions.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        alibi: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let (b, t, c) = x.size3().expect("hidden states are (B, T, C)");
        let hd = c / self.heads;
        // The fused output runs head by head, each head's [q, k, v]: (B, T, nh, 3, hd).
        let qkv = self
            .query_key_value
            .forward(x)
            .view([b, t, self.heads, 3, hd]);
        let part = |i: i64| qkv.select(3, i).transpose(1, 2); // (B, nh, T, hd)
        let (k, v) = cache.extend(layer, part(1), part(2)); // (B, nh, S, hd)
        let scale = (hd as f64).powf(-0.5);
        let y = common::attend_biased(&part(0), &k, &v, mask, scale, alibi);
        self.dense.forward(&common::merge_heads(&y))
    }
}

/// dense_4h_to_h(gelu(dense_h_to_4h(x))). BLOOM writes out GELU's tanh approximation with
/// sqrt(2/pi) as 0.79788456, a rounding below fp32's precision: torch's tanh GELU is the same
/// function and keeps only its input for the backward pass.
#[derive(Debug)]
struct Mlp {
    dense_h_to_4h: Projection,
    dense_4h_to_h: Projection,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.dense_4h_to_h
            .forward(&self.dense_h_to_4h.forward(x).gelu("tanh"))
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: nn::LayerNorm,
    self_attention: Attention,
    post_attention_layernorm: nn::LayerNorm,
    mlp: Mlp,
    residual_from_norm: bool,
}

impl Block {
    fn new(p: nn::Path, cfg: &BloomConfig) -> Self {
        let c = cfg.hidden_size;
        let linear = |p: nn::Path, d_in, d_out| common::linear(p, d_in, d_out, true, cfg.init_std);
        let (a, m) = (&p / "self_attention", &p / "mlp");
        Self {
            input_layernorm: cfg.layer_norm(&p / "input_layernorm"),
            self_attention: Attention {
                query_key_value: linear(&a / "query_key_value", c, 3 * c),
                dense: linear(&a / "dense", c, c),
                heads: cfg.heads,
            },
            post_attention_layernorm: cfg.layer_norm(&p / "post_attention_layernorm"),
            mlp: Mlp {
                dense_h_to_4h: linear(&m / "dense_h_to_4h", c, 4 * c),
                dense_4h_to_h: linear(&m / "dense_4h_to_h", 4 * c, c),
            },
            residual_from_norm: cfg.residual_from_norm,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        alibi: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let residual = if self.residual_from_norm { &normed } else { x };
        let x = residual
            + self
                .self_attention
                .forward(&normed, mask, alibi, cache, layer);
        let normed = self.post_attention_layernorm.forward(&x);
        let residual = if self.residual_from_norm { &normed } else { &x };
        residual + self.mlp.forward(&normed)
    }
}

/// BloomForCausalLM. The weights live in `vs`; the model itself is immutable.
#[derive(Debug)]
pub struct Bloom {
    pub config: BloomConfig,
    /// The config.json it was made from (written back on save).
    json: serde_json::Value,
    /// (V, C)
    word_embeddings: Tensor,
    word_embeddings_layernorm: nn::LayerNorm,
    h: Vec<Block>,
    ln_f: nn::LayerNorm,
    /// None when tied to `word_embeddings`.
    lm_head: Option<Tensor>,
    slopes: Vec<f32>,
    recompute: Recompute,
}

impl Bloom {
    /// Random weights (HF's initialisation) in `vs` for the config.json `json` (from `origin`).
    pub fn new(vs: &nn::VarStore, json: serde_json::Value, origin: &Path) -> Result<Self> {
        let config = BloomConfig::read(&json, origin)?;
        let t = vs.root() / "transformer";
        let init = Init::Randn {
            mean: 0.0,
            stdev: config.init_std,
        };
        let table = [config.vocab_size, config.hidden_size];
        let word_embeddings = (&t / "word_embeddings").var("weight", &table, init);
        let word_embeddings_layernorm = config.layer_norm(&t / "word_embeddings_layernorm");
        let h = (0..config.layers)
            .map(|i| Block::new(&t / "h" / i, &config))
            .collect();
        let ln_f = config.layer_norm(&t / "ln_f");
        let lm_head = (!config.tie_word_embeddings)
            .then(|| (vs.root() / "lm_head").var("weight", &table, init));
        Ok(Self {
            slopes: alibi_slopes(config.heads),
            config,
            json,
            word_embeddings,
            word_embeddings_layernorm,
            h,
            ln_f,
            lm_head,
            recompute: Recompute::default(),
        })
    }

    /// Loads a Hugging Face BLOOM folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let json: serde_json::Value = hf::read_config(dir)?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs, json, &dir.join(hf::CONFIG_FILE))?;
        // A tied head's lm_head.weight is no variable here: load_into leaves it unread.
        common::load_into(&vs, dir, |name| Some(canonical_name(name)))?;
        Ok((vs, model))
    }

    /// Normed token embeddings.
    fn embed(&self, input_ids: &Tensor) -> Tensor {
        self.word_embeddings_layernorm
            .forward(&common::embed(&self.word_embeddings, input_ids))
    }
}

impl CausalLm for Bloom {
    fn hf_config(&self) -> serde_json::Value {
        self.json.clone()
    }

    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = input_ids.size()[1];
        let (_, mask) = common::positions_and_mask(t, attention_mask);
        let alibi = alibi(&self.slopes, attention_mask);
        if self.recompute.active(cache.len()) {
            let x0 = tch::no_grad(|| self.embed(input_ids));
            let block = |i: usize, x: &Tensor| {
                self.h[i].forward(x, &mask, &alibi, &mut KvCache::default(), i)
            };
            let context = vec![
                input_ids.shallow_clone(),
                mask.shallow_clone(),
                alibi.shallow_clone(),
            ];
            let last = self.recompute.forward(x0, self.h.len(), block, context);
            return self.ln_f.forward(&last);
        }
        let mut x = self.embed(input_ids);
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(&x, &mask, &alibi, cache, i);
        }
        self.ln_f.forward(&x)
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head.as_ref().unwrap_or(&self.word_embeddings).tr())
    }

    fn projections(&self) -> Vec<&Projection> {
        self.h
            .iter()
            .flat_map(|b| {
                [
                    &b.self_attention.query_key_value,
                    &b.self_attention.dense,
                    &b.mlp.dense_h_to_4h,
                    &b.mlp.dense_4h_to_h,
                ]
            })
            .collect()
    }

    fn set_checkpointing(&self, on: bool) {
        self.recompute.set_enabled(on);
    }

    /// Context: [ids, mask, alibi].
    fn finish_backward(&self) {
        self.recompute.backward(
            |i, x, c| self.h[i].forward(x, &c[1], &c[2], &mut KvCache::default(), i),
            |c| self.embed(&c[0]),
        );
    }
}

/// Checkpoints saved from BloomModel (the original bigscience/bloom* files) name weights
/// without the `transformer.` prefix.
fn canonical_name(name: &str) -> String {
    if name.starts_with("transformer.") || name.starts_with("lm_head.") {
        name.to_string()
    } else {
        format!("transformer.{name}")
    }
}
