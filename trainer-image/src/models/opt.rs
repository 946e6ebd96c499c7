//! OPT (`OPTForCausalLM`), read top to bottom: config -> attention -> MLP -> block -> model.
//! Variables carry Hugging Face names by construction (`model.decoder.layers.0.self_attn.q_proj.
//! weight`; linear weights are nn.Linear's [out, in]). Blocks norm before attention and MLP (most
//! sizes) or after them (OPT-350m); learned positions are looked up two rows in (OPT's offset);
//! a token embedding narrower than the blocks (`word_embed_proj_dim`) is projected in and out.
//! The LM head is the token embedding unless the config unties them.
use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Tensor};

use super::projection::Projection;
use super::recompute::Recompute;
use super::{CausalLm, KvCache, common, hf};
use crate::error::{Error, Result};

/// Rows of the position table before position 0 (a fairseq legacy HF keeps).
const POSITION_OFFSET: i64 = 2;
/// OPT's LayerNorms use nn.LayerNorm's default epsilon; config.json has no field for it.
const NORM_EPS: f64 = 1e-5;

/// The fields of HF's `OPTConfig` we use (defaults are HF's).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct OptConfig {
    #[serde(default = "defaults::vocab")]
    pub vocab_size: i64,
    /// Width of the blocks.
    #[serde(default = "defaults::hidden")]
    pub hidden_size: i64,
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: i64,
    /// Attention heads (divide hidden_size).
    #[serde(default = "defaults::heads")]
    pub num_attention_heads: i64,
    /// MLP width.
    #[serde(default = "defaults::ffn")]
    pub ffn_dim: i64,
    /// Longest sequence (learned position embeddings).
    #[serde(default = "defaults::positions")]
    pub max_position_embeddings: i64,
    /// Width of the token embedding and the LM head; None means hidden_size.
    #[serde(default)]
    pub word_embed_proj_dim: Option<i64>,
    /// Pre-LN blocks and a final norm (true), or post-LN blocks and none (OPT-350m).
    #[serde(default = "defaults::yes")]
    pub do_layer_norm_before: bool,
    /// Set by checkpoints fine-tuned before transformers 4.20.1, which have no final norm.
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Biases of the attention and MLP projections.
    #[serde(default = "defaults::yes")]
    pub enable_bias: bool,
    /// Whether the LayerNorms have a weight and a bias.
    #[serde(default = "defaults::yes")]
    pub layer_norm_elementwise_affine: bool,
    /// Only `relu`, every OPT's, is supported.
    #[serde(default = "defaults::activation")]
    pub activation_function: String,
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    /// Standard deviation of random weights.
    #[serde(default = "defaults::init_std")]
    pub init_std: f64,
}

mod defaults {
    pub fn vocab() -> i64 {
        50272
    }
    pub fn hidden() -> i64 {
        768
    }
    pub fn layers() -> i64 {
        12
    }
    pub fn heads() -> i64 {
        12
    }
    pub fn ffn() -> i64 {
        3072
    }
    pub fn positions() -> i64 {
        2048
    }
    pub fn yes() -> bool {
        true
    }
    pub fn activation() -> String {
        "relu".into()
    }
    pub fn init_std() -> f64 {
        0.02
    }
}

impl OptConfig {
    /// The config.json `config` (read from `origin`), checked.
    pub fn read(config: &serde_json::Value, origin: &Path) -> Result<Self> {
        let parsed: Self = serde_json::from_value(config.clone())
            .map_err(|e| Error::invalid(origin, e.to_string()))?;
        parsed.check(origin)?;
        Ok(parsed)
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(origin, m));
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("ffn_dim", self.ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.embed_dim()),
        ] {
            if v <= 0 {
                return bad(format!("{field} must be positive, not {v}"));
            }
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if self.activation_function != "relu" {
            return bad(format!(
                "activation_function {:?} is not supported (relu is)",
                self.activation_function
            ));
        }
        Ok(())
    }

    /// Width of the token embedding, the final hidden states and the LM head's input.
    pub fn embed_dim(&self) -> i64 {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    fn layer_norm(&self, p: nn::Path) -> nn::LayerNorm {
        common::layer_norm(
            p,
            self.hidden_size,
            NORM_EPS,
            self.layer_norm_elementwise_affine,
        )
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    out_proj: Projection,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &OptConfig) -> Self {
        let c = cfg.hidden_size;
        let proj = |name: &str| common::linear(&p / name, c, c, cfg.enable_bias, cfg.init_std);
        Self {
            q_proj: proj("q_proj"),
            k_proj: proj("k_proj"),
            v_proj: proj("v_proj"),
            out_proj: proj("out_proj"),
            heads: cfg.num_attention_heads,
        }
    }

    /// `mask` is (B, 1, T, S) with true where attention is allowed; `cache` holds earlier positions.
    fn forward(&self, x: &Tensor, mask: &Tensor, cache: &mut KvCache, layer: usize) -> Tensor {
        let (b, t, c) = x.size3().expect("hidden states are (B, T, C)");
        let hd = c / self.heads;
        let heads = |y: Tensor| y.view([b, t, self.heads, hd]).transpose(1, 2); // (B, nh, T, hd)
        // HF scales the queries rather than the scores; the same order rounds the same.
        let q = heads(self.q_proj.forward(x) * (hd as f64).powf(-0.5));
        let k = heads(self.k_proj.forward(x));
        let v = heads(self.v_proj.forward(x));
        let (k, v) = cache.extend(layer, k, v); // (B, nh, S, hd)
        let y = common::attend_scaled(&q, &k, &v, mask, 1.0, None);
        self.out_proj.forward(&common::merge_heads(&y))
    }
}

/// fc2(relu(fc1(x))); HF keeps fc1 and fc2 directly in the block, and so do the names here.
#[derive(Debug)]
struct Mlp {
    fc1: Projection,
    fc2: Projection,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).relu())
    }
}

#[derive(Debug)]
struct Block {
    self_attn_layer_norm: nn::LayerNorm,
    self_attn: Attention,
    final_layer_norm: nn::LayerNorm,
    mlp: Mlp,
    /// Pre-LN (norm the sublayers' inputs) or post-LN (norm the residual sums).
    norm_before: bool,
}

impl Block {
    fn new(p: nn::Path, cfg: &OptConfig) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.ffn_dim);
        let linear = |name: &str, d_in, d_out| {
            common::linear(&p / name, d_in, d_out, cfg.enable_bias, cfg.init_std)
        };
        Self {
            self_attn_layer_norm: cfg.layer_norm(&p / "self_attn_layer_norm"),
            self_attn: Attention::new(&p / "self_attn", cfg),
            final_layer_norm: cfg.layer_norm(&p / "final_layer_norm"),
            mlp: Mlp {
                fc1: linear("fc1", c, f),
                fc2: linear("fc2", f, c),
            },
            norm_before: cfg.do_layer_norm_before,
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cache: &mut KvCache, layer: usize) -> Tensor {
        if self.norm_before {
            let normed = self.self_attn_layer_norm.forward(x);
            let x = x + self.self_attn.forward(&normed, mask, cache, layer);
            &x + self.mlp.forward(&self.final_layer_norm.forward(&x))
        } else {
            let x = x + self.self_attn.forward(x, mask, cache, layer);
            let x = self.self_attn_layer_norm.forward(&x);
            self.final_layer_norm.forward(&(&x + self.mlp.forward(&x)))
        }
    }
}

/// OPTForCausalLM. The weights live in `vs`; the model itself is immutable.
#[derive(Debug)]
pub struct Opt {
    pub config: OptConfig,
    /// The config.json it was made from (written back on save).
    json: serde_json::Value,
    /// (V, word_embed_proj_dim)
    embed_tokens: Tensor,
    /// (max_position_embeddings + 2, C)
    embed_positions: Tensor,
    /// Between the embedding's width and the blocks', when they differ.
    project_in: Option<Projection>,
    project_out: Option<Projection>,
    layers: Vec<Block>,
    final_layer_norm: Option<nn::LayerNorm>,
    /// None when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    recompute: Recompute,
}

impl Opt {
    /// Random weights (HF's initialisation) in `vs` for the config.json `json` (from `origin`).
    pub fn new(vs: &nn::VarStore, json: serde_json::Value, origin: &Path) -> Result<Self> {
        let config = OptConfig::read(&json, origin)?;
        let d = vs.root() / "model" / "decoder";
        let (c, e) = (config.hidden_size, config.embed_dim());
        let init = Init::Randn {
            mean: 0.0,
            stdev: config.init_std,
        };
        let embed_tokens = (&d / "embed_tokens").var("weight", &[config.vocab_size, e], init);
        let positions = config.max_position_embeddings + POSITION_OFFSET;
        let embed_positions = (&d / "embed_positions").var("weight", &[positions, c], init);
        let project = |name: &str, d_in, d_out| {
            (e != c).then(|| common::linear(&d / name, d_in, d_out, false, config.init_std))
        };
        let (project_in, project_out) = (project("project_in", e, c), project("project_out", c, e));
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::new(&d / "layers" / i, &config))
            .collect();
        let final_layer_norm = (config.do_layer_norm_before && !config.remove_final_layer_norm)
            .then(|| config.layer_norm(&d / "final_layer_norm"));
        let lm_head = (!config.tie_word_embeddings)
            .then(|| (vs.root() / "lm_head").var("weight", &[config.vocab_size, e], init));
        Ok(Self {
            config,
            json,
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            recompute: Recompute::default(),
        })
    }

    /// Loads a Hugging Face OPT folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let json: serde_json::Value = hf::read_config(dir)?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs, json, &dir.join(hf::CONFIG_FILE))?;
        // A tied head's lm_head.weight is no variable here: load_into leaves it unread.
        common::load_into(&vs, dir, |name| Some(canonical_name(name)))?;
        Ok((vs, model))
    }

    /// Token embeddings (projected to the blocks' width) plus position embeddings.
    fn embed(&self, input_ids: &Tensor, positions: &Tensor) -> Tensor {
        let tokens = common::embed(&self.embed_tokens, input_ids);
        let tokens = match &self.project_in {
            Some(p) => p.forward(&tokens),
            None => tokens,
        };
        tokens + common::embed(&self.embed_positions, &(positions + POSITION_OFFSET))
    }

    /// The last block's output -> final hidden states: the final norm and the projection out,
    /// where the model has them.
    fn finish(&self, x: Tensor) -> Tensor {
        let x = match &self.final_layer_norm {
            Some(norm) => norm.forward(&x),
            None => x,
        };
        match &self.project_out {
            Some(p) => p.forward(&x),
            None => x,
        }
    }
}

impl CausalLm for Opt {
    fn hf_config(&self) -> serde_json::Value {
        self.json.clone()
    }

    /// The final hidden states are as wide as the token embedding.
    fn hidden_size(&self) -> i64 {
        self.config.embed_dim()
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = input_ids.size()[1];
        // Positions count real tokens only, so left padding works (as HF's do).
        let (positions, mask) = common::positions_and_mask(t, attention_mask);
        if self.recompute.active(cache.len()) {
            let x0 = tch::no_grad(|| self.embed(input_ids, &positions));
            let block =
                |i: usize, x: &Tensor| self.layers[i].forward(x, &mask, &mut KvCache::default(), i);
            let context = vec![
                input_ids.shallow_clone(),
                positions.shallow_clone(),
                mask.shallow_clone(),
            ];
            let last = self
                .recompute
                .forward(x0, self.layers.len(), block, context);
            return self.finish(last);
        }
        let mut x = self.embed(input_ids, &positions);
        for (i, block) in self.layers.iter().enumerate() {
            x = block.forward(&x, &mask, cache, i);
        }
        self.finish(x)
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed_tokens).tr())
    }

    fn projections(&self) -> Vec<&Projection> {
        self.layers
            .iter()
            .flat_map(|l| {
                let a = &l.self_attn;
                [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.out_proj,
                    &l.mlp.fc1,
                    &l.mlp.fc2,
                ]
            })
            .collect()
    }

    fn set_checkpointing(&self, on: bool) {
        self.recompute.set_enabled(on);
    }

    /// Context: [ids, positions, mask].
    fn finish_backward(&self) {
        self.recompute.backward(
            |i, x, c| self.layers[i].forward(x, &c[2], &mut KvCache::default(), i),
            |c| self.embed(&c[0], &c[1]),
        );
    }
}

/// Checkpoints saved from OPTModel (the original facebook/opt-* files) name weights without
/// the `model.` prefix.
fn canonical_name(name: &str) -> String {
    if name.starts_with("decoder.") {
        format!("model.{name}")
    } else {
        name.to_string()
    }
}
