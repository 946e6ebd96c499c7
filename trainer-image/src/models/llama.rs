//! Llama (`LlamaForCausalLM`, Llama 2/3 style), top to bottom: config -> RMSNorm -> rotary
//! embeddings -> grouped-query attention -> SwiGLU MLP -> block -> model. Variables carry HF
//! names by construction (`model.layers.0.self_attn.q_proj.weight`); linear weights are HF's
//! [out, in].
use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Init, Module};
use tch::{Device, Kind, Tensor};

use super::projection::{Layout, Projection};
use super::recompute::Recompute;
use super::{CausalLm, KvCache, common, hf};
use crate::error::{Error, Result};

/// The fields of HF's `LlamaConfig` we use (defaults are HF's).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    /// Residual stream width.
    pub hidden_size: i64,
    /// SwiGLU inner width.
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); None means num_attention_heads.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head width; None means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "defaults::positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "defaults::eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::theta")]
    pub rope_theta: f64,
    /// Only plain RoPE is supported; a scaled variant is refused rather than silently ignored.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "defaults::act")]
    pub hidden_act: String,
}

mod defaults {
    pub fn positions() -> i64 {
        2048
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn theta() -> f64 {
        10000.0
    }
    pub fn act() -> String {
        "silu".into()
    }
}

impl LlamaConfig {
    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn check(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(origin, m));
        if self.num_attention_heads <= 0
            || self.kv_heads() <= 0
            || self.num_attention_heads % self.kv_heads() != 0
        {
            return bad(format!(
                "num_key_value_heads {} must divide num_attention_heads {}",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("rope_scaling is not supported yet".into());
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (silu is)",
                self.hidden_act
            ));
        }
        Ok(())
    }

    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.kv_heads(),
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
            "torch_dtype": "float32",
        })
    }
}

/// x / rms(x) * weight, computed in fp32 like HF.
#[derive(Debug)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            eps,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let rms = (x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        &self.weight * (x32 * rms).to_kind(x.kind())
    }
}

/// cos and sin (B, 1, T, hd) of the rotary embedding for `positions` (B, T).
fn rotary(positions: &Tensor, head_dim: i64, theta: f64, kind: Kind) -> (Tensor, Tensor) {
    let device = positions.device();
    let exponents =
        Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / head_dim as f64;
    let inv_freq = Tensor::from(theta as f32)
        .to_device(device)
        .pow(&exponents)
        .reciprocal(); // (hd/2)
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq; // (B, T, hd/2)
    let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (B, 1, T, hd)
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// [x1, x2] -> [-x2, x1] over the last dimension's halves.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> Projection {
    Projection::new(
        p,
        d_in,
        d_out,
        Layout::OutIn,
        bias,
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )
}

#[derive(Debug)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        let (h, kv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        Self {
            q_proj: linear(&p / "q_proj", c.hidden_size, h * hd, c.attention_bias),
            k_proj: linear(&p / "k_proj", c.hidden_size, kv * hd, c.attention_bias),
            v_proj: linear(&p / "v_proj", c.hidden_size, kv * hd, c.attention_bias),
            o_proj: linear(&p / "o_proj", h * hd, c.hidden_size, c.attention_bias),
            heads: h,
            kv_heads: kv,
            head_dim: hd,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let (cos, sin) = rope;
        let (b, t, _) = x.size3().expect("(B, T, C)");
        let split = |y: Tensor, n: i64| y.view([b, t, n, self.head_dim]).transpose(1, 2); // (B, n, T, hd)
        let q = split(self.q_proj.forward(x), self.heads);
        let k = split(self.k_proj.forward(x), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads);
        let (q, k) = (
            &q * cos + rotate_half(&q) * sin,
            &k * cos + rotate_half(&k) * sin,
        );
        let (k, v) = cache.extend(layer, k, v); // rotated keys are cached, as in HF: (B, kv, S, hd)
        // Each key/value head serves heads / kv_heads consecutive query heads.
        let rep = self.heads / self.kv_heads;
        let (k, v) = (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        );
        self.o_proj
            .forward(&common::merge_heads(&common::attend(&q, &k, &v, mask)))
    }
}

/// SwiGLU: down(silu(gate(x)) * up(x)).
#[derive(Debug)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: nn::Path, c: &LlamaConfig) -> Self {
        let m = &p / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", c.hidden_size, c.rms_norm_eps),
            self_attn: Attention::new(&p / "self_attn", c),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                c.hidden_size,
                c.rms_norm_eps,
            ),
            mlp: Mlp {
                gate_proj: linear(
                    &m / "gate_proj",
                    c.hidden_size,
                    c.intermediate_size,
                    c.mlp_bias,
                ),
                up_proj: linear(
                    &m / "up_proj",
                    c.hidden_size,
                    c.intermediate_size,
                    c.mlp_bias,
                ),
                down_proj: linear(
                    &m / "down_proj",
                    c.intermediate_size,
                    c.hidden_size,
                    c.mlp_bias,
                ),
            },
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let x =
            x + self
                .self_attn
                .forward(&self.input_layernorm.forward(x), rope, mask, cache, layer);
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x))
    }
}

/// LlamaForCausalLM. The weights live in `vs`; the model itself is immutable.
#[derive(Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// None when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    recompute: Recompute,
}

impl Llama {
    /// Random weights (HF's initialisation: normal 0.02, norms at 1) in `vs`.
    pub fn new(vs: &nn::VarStore, config: LlamaConfig) -> Result<Self> {
        config.check(Path::new("<architecture>"))?;
        let m = vs.root() / "model";
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embed_tokens =
            (&m / "embed_tokens").var("weight", &[config.vocab_size, config.hidden_size], init);
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::new(&m / "layers" / i, &config))
            .collect();
        let norm = RmsNorm::new(&m / "norm", config.hidden_size, config.rms_norm_eps);
        let lm_head = (!config.tie_word_embeddings).then(|| {
            (vs.root() / "lm_head").var("weight", &[config.vocab_size, config.hidden_size], init)
        });
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            recompute: Recompute::default(),
        })
    }

    /// Loads a Hugging Face Llama folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let config: LlamaConfig = hf::read_config(dir)?;
        config.check(&dir.join(hf::CONFIG_FILE))?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs, config)?;
        let tied = model.lm_head.is_none();
        // Rotary inverse frequencies are recomputed, never read; a tied head has no own tensor.
        common::load_into(&vs, dir, |name| {
            (!(name.ends_with("rotary_emb.inv_freq") || tied && name == "lm_head.weight"))
                .then(|| name.to_string())
        })?;
        Ok((vs, model))
    }
}

impl CausalLm for Llama {
    fn hf_config(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        let t = input_ids.size()[1];
        let (positions, mask) = common::positions_and_mask(t, attention_mask);
        let kind = self.embed_tokens.kind();
        let rope = rotary(
            &positions,
            self.config.head_dim(),
            self.config.rope_theta,
            kind,
        );
        if self.recompute.active(cache.len()) {
            let x0 = tch::no_grad(|| common::embed(&self.embed_tokens, input_ids));
            let block = |i: usize, x: &Tensor| {
                self.layers[i].forward(x, &rope, &mask, &mut KvCache::default(), i)
            };
            let context = vec![
                input_ids.shallow_clone(),
                mask.shallow_clone(),
                rope.0.shallow_clone(),
                rope.1.shallow_clone(),
            ];
            let last = self
                .recompute
                .forward(x0, self.layers.len(), block, context);
            return self.norm.forward(&last);
        }
        let mut x = common::embed(&self.embed_tokens, input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &rope, &mask, cache, i);
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed_tokens).tr())
    }

    fn set_checkpointing(&self, on: bool) {
        self.recompute.set_enabled(on);
    }

    /// Context: [ids, mask, cos, sin].
    fn finish_backward(&self) {
        self.recompute.backward(
            |i, x, c| {
                self.layers[i].forward(
                    x,
                    &(c[2].shallow_clone(), c[3].shallow_clone()),
                    &c[1],
                    &mut KvCache::default(),
                    i,
                )
            },
            |c| common::embed(&self.embed_tokens, &c[0]),
        );
    }

    fn projections(&self) -> Vec<&Projection> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.self_attn.q_proj,
                    &l.self_attn.k_proj,
                    &l.self_attn.v_proj,
                    &l.self_attn.o_proj,
                    &l.mlp.gate_proj,
                    &l.mlp.up_proj,
                    &l.mlp.down_proj,
                ]
            })
            .collect()
    }
}
