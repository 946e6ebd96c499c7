//! GPT-2 (`GPT2LMHeadModel`), read top to bottom: config -> layer norm -> attention -> MLP ->
//! block -> model. Variables carry Hugging Face names by construction (`transformer.h.0.attn.
//! c_attn.weight`), so HF folders load and save without renaming. HF's Conv1D stores weights as
//! [in, out]; so do we. The LM head is tied to the token embedding, as in HF.
use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Tensor};

use super::projection::{Layout, Projection};
use super::recompute::Recompute;
use super::{CausalLm, KvCache, common, hf};
use crate::error::{Error, Result};

/// The fields of HF's `GPT2Config` we use (defaults are HF's).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Gpt2Config {
    /// Token vocabulary size.
    #[serde(default = "defaults::vocab")]
    pub vocab_size: i64,
    /// Longest sequence (learned position embeddings).
    #[serde(default = "defaults::positions")]
    pub n_positions: i64,
    /// Residual stream width.
    #[serde(default = "defaults::embd")]
    pub n_embd: i64,
    /// Transformer blocks.
    #[serde(default = "defaults::layers")]
    pub n_layer: i64,
    /// Attention heads (divide n_embd).
    #[serde(default = "defaults::heads")]
    pub n_head: i64,
    /// MLP width; None means 4 x n_embd.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "defaults::eps")]
    pub layer_norm_epsilon: f64,
    /// Only `gelu_new` (tanh approximation), GPT-2's own, is supported.
    #[serde(default = "defaults::activation")]
    pub activation_function: String,
}

mod defaults {
    pub fn vocab() -> i64 {
        50257
    }
    pub fn positions() -> i64 {
        1024
    }
    pub fn embd() -> i64 {
        768
    }
    pub fn layers() -> i64 {
        12
    }
    pub fn heads() -> i64 {
        12
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn activation() -> String {
        "gelu_new".into()
    }
}

impl Gpt2Config {
    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(origin, m));
        if self.n_head <= 0 || self.n_embd % self.n_head != 0 {
            return bad(format!(
                "n_head {} does not divide n_embd {}",
                self.n_head, self.n_embd
            ));
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return bad(format!(
                "activation_function {:?} is not supported (gelu_new is)",
                self.activation_function
            ));
        }
        Ok(())
    }

    fn inner(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The config.json written next to saved weights.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation_function,
            "tie_word_embeddings": true,
        })
    }
}

/// HF's Conv1D: y = x W + b with W stored [in, out].
fn conv1d(p: nn::Path, d_in: i64, d_out: i64, std: f64) -> Projection {
    Projection::new(
        p,
        d_in,
        d_out,
        Layout::InOut,
        true,
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

#[derive(Debug)]
struct Attention {
    c_attn: Projection,
    c_proj: Projection,
    n_head: i64,
}

impl Attention {
    /// `mask` is (B, 1, T, S) with true where attention is allowed; `cache` holds earlier positions.
    fn forward(&self, x: &Tensor, mask: &Tensor, cache: &mut KvCache, layer: usize) -> Tensor {
        let (b, t, c) = x.size3().expect("hidden states are (B, T, C)");
        let hs = c / self.n_head;
        let qkv = self.c_attn.forward(x).split(c, 2);
        let heads = |t_: &Tensor| t_.view([b, t, self.n_head, hs]).transpose(1, 2); // (B, nh, T, hs)
        let (k, v) = cache.extend(layer, heads(&qkv[1]), heads(&qkv[2])); // (B, nh, S, hs)
        let y = common::attend(&heads(&qkv[0]), &k, &v, mask);
        self.c_proj.forward(&common::merge_heads(&y))
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Projection,
    c_proj: Projection,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.c_proj.forward(&self.c_fc.forward(x).gelu("tanh"))
    }
}

#[derive(Debug)]
struct Block {
    ln_1: nn::LayerNorm,
    attn: Attention,
    ln_2: nn::LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: nn::Path, cfg: &Gpt2Config) -> Self {
        let ln =
            |name: &str| common::layer_norm(&p / name, cfg.n_embd, cfg.layer_norm_epsilon, true);
        // GPT-2 scales the residual projections' init by 1/sqrt(2 x layers).
        let (std, proj_std) = (0.02, 0.02 / (2.0 * cfg.n_layer as f64).sqrt());
        let (a, m) = (&p / "attn", &p / "mlp");
        Self {
            ln_1: ln("ln_1"),
            attn: Attention {
                c_attn: conv1d(&a / "c_attn", cfg.n_embd, 3 * cfg.n_embd, std),
                c_proj: conv1d(&a / "c_proj", cfg.n_embd, cfg.n_embd, proj_std),
                n_head: cfg.n_head,
            },
            ln_2: ln("ln_2"),
            mlp: Mlp {
                c_fc: conv1d(&m / "c_fc", cfg.n_embd, cfg.inner(), std),
                c_proj: conv1d(&m / "c_proj", cfg.inner(), cfg.n_embd, proj_std),
            },
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cache: &mut KvCache, layer: usize) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), mask, cache, layer);
        &x + self.mlp.forward(&self.ln_2.forward(&x))
    }
}

/// GPT2LMHeadModel. The weights live in `vs`; the model itself is immutable.
#[derive(Debug)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    recompute: Recompute,
}

impl Gpt2 {
    /// Random weights (HF's initialisation) in `vs`.
    pub fn new(vs: &nn::VarStore, config: Gpt2Config) -> Result<Self> {
        config.check(Path::new("<architecture>"))?;
        let t = vs.root() / "transformer";
        let emb = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let wte = (&t / "wte").var("weight", &[config.vocab_size, config.n_embd], emb);
        let wpe = (&t / "wpe").var("weight", &[config.n_positions, config.n_embd], emb);
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(&t / "h" / i, &config))
            .collect();
        let ln_f = common::layer_norm(&t / "ln_f", config.n_embd, config.layer_norm_epsilon, true);
        Ok(Self {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            recompute: Recompute::default(),
        })
    }

    /// Token plus position embeddings.
    fn embed(&self, input_ids: &Tensor, positions: &Tensor) -> Tensor {
        common::embed(&self.wte, input_ids) + common::embed(&self.wpe, positions)
    }

    /// Loads a Hugging Face GPT-2 folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let config: Gpt2Config = hf::read_config(dir)?;
        config.check(&dir.join(hf::CONFIG_FILE))?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs, config)?;
        common::load_into(&vs, dir, |name| {
            (!is_buffer_or_tied(name)).then(|| canonical_name(name))
        })?;
        Ok((vs, model))
    }
}

impl CausalLm for Gpt2 {
    fn hf_config(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn hidden_size(&self) -> i64 {
        self.config.n_embd
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = input_ids.size()[1];
        let (positions, mask) = common::positions_and_mask(t, attention_mask);
        if self.recompute.active(cache.len()) {
            let x0 = tch::no_grad(|| self.embed(input_ids, &positions));
            let block =
                |i: usize, x: &Tensor| self.blocks[i].forward(x, &mask, &mut KvCache::default(), i);
            let last = self.recompute.forward(
                x0,
                self.blocks.len(),
                block,
                vec![
                    input_ids.shallow_clone(),
                    positions.shallow_clone(),
                    mask.shallow_clone(),
                ],
            );
            return self.ln_f.forward(&last);
        }
        let mut x = self.embed(input_ids, &positions);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &mask, cache, i);
        }
        self.ln_f.forward(&x)
    }

    /// Tied to the token embedding.
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.wte.tr())
    }

    fn projections(&self) -> Vec<&Projection> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.attn.c_attn, &b.attn.c_proj, &b.mlp.c_fc, &b.mlp.c_proj])
            .collect()
    }

    fn set_checkpointing(&self, on: bool) {
        self.recompute.set_enabled(on);
    }

    /// Context: [ids, positions, mask].
    fn finish_backward(&self) {
        self.recompute.backward(
            |i, x, c| self.blocks[i].forward(x, &c[2], &mut KvCache::default(), i),
            |c| self.embed(&c[0], &c[1]),
        );
    }
}

/// HF checkpoints may hold attention-mask buffers and a tied `lm_head.weight`; neither is a parameter here.
fn is_buffer_or_tied(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// The original GPT-2 files name weights without the `transformer.` prefix.
fn canonical_name(name: &str) -> String {
    if name.starts_with("transformer.") {
        name.to_string()
    } else {
        format!("transformer.{name}")
    }
}
