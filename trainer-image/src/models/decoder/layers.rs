//! The decoder's block, top to bottom: RMSNorm -> attention (grouped-query, rotary, optional
//! q/k norms, sliding window, soft-cap) -> gated MLP -> block. Variables carry HF names
//! (`model.layers.0.self_attn.q_proj.weight`); linear weights are HF's [out, in].
use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::spec::{Activation, DecoderSpec};
use crate::models::projection::Projection;
use crate::models::{KvCache, common, rope};

/// x / rms(x) scaled by w (Llama: after casting back to x's dtype) or by 1 + w (Gemma: in fp32,
/// then cast), as the two HF implementations do.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    plus_one: bool,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, spec: &DecoderSpec) -> Self {
        // Gemma stores w - 1: a fresh norm is the identity either way.
        let init = if spec.norm_plus_one { 0.0 } else { 1.0 };
        Self {
            weight: p.var("weight", &[dim], Init::Const(init)),
            eps: spec.norm_eps,
            plus_one: spec.norm_plus_one,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let normed =
            &x32 * (x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        if self.plus_one {
            (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(x.kind())
        } else {
            &self.weight * normed.to_kind(x.kind())
        }
    }
}

/// An nn.Linear with HF's initialisation (normal 0.02).
fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> Projection {
    common::linear(p, d_in, d_out, bias, 0.02)
}

/// What a block's forward needs besides its input: the rotary table and the mask of its kind.
pub struct BlockInputs<'a> {
    pub rope: &'a (Tensor, Tensor),
    pub mask: &'a Tensor,
}

#[derive(Debug)]
pub struct Attention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    scale: f64,
    softcap: Option<f64>,
}

impl Attention {
    fn new(p: nn::Path, s: &DecoderSpec) -> Self {
        let (h, kv, hd) = (s.heads, s.kv_heads, s.head_dim);
        Self {
            q_proj: linear(&p / "q_proj", s.hidden_size, h * hd, s.qkv_bias),
            k_proj: linear(&p / "k_proj", s.hidden_size, kv * hd, s.qkv_bias),
            v_proj: linear(&p / "v_proj", s.hidden_size, kv * hd, s.qkv_bias),
            o_proj: linear(&p / "o_proj", h * hd, s.hidden_size, s.o_bias),
            q_norm: s.qk_norm.then(|| RmsNorm::new(&p / "q_norm", hd, s)),
            k_norm: s.qk_norm.then(|| RmsNorm::new(&p / "k_norm", hd, s)),
            heads: h,
            kv_heads: kv,
            head_dim: hd,
            scale: s.attention_scale,
            softcap: s.attention_softcap,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("(B, T, C)");
        // (B, T, n, hd), normed per head where the family does, -> (B, n, T, hd)
        let split = |y: Tensor, n: i64, norm: &Option<RmsNorm>| {
            let y = y.view([b, t, n, self.head_dim]);
            norm.as_ref()
                .map_or(y.shallow_clone(), |m| m.forward(&y))
                .transpose(1, 2)
        };
        let q = split(self.q_proj.forward(x), self.heads, &self.q_norm);
        let k = split(self.k_proj.forward(x), self.kv_heads, &self.k_norm);
        let v = split(self.v_proj.forward(x), self.kv_heads, &None);
        let (q, k) = (rope::rotate(&q, inputs.rope), rope::rotate(&k, inputs.rope));
        let (k, v) = cache.extend(layer, k, v); // rotated keys are cached, as in HF: (B, kv, S, hd)
        // Each key/value head serves heads / kv_heads consecutive query heads.
        let rep = self.heads / self.kv_heads;
        let (k, v) = (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        );
        let y = common::attend_scaled(&q, &k, &v, inputs.mask, self.scale, self.softcap);
        self.o_proj.forward(&common::merge_heads(&y))
    }
}

/// Gated MLP: down(act(gate(x)) * up(x)).
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
    activation: Activation,
}

impl Mlp {
    fn new(p: nn::Path, s: &DecoderSpec) -> Self {
        let (c, i) = (s.hidden_size, s.intermediate_size);
        Self {
            gate_proj: linear(&p / "gate_proj", c, i, s.mlp_bias),
            up_proj: linear(&p / "up_proj", c, i, s.mlp_bias),
            down_proj: linear(&p / "down_proj", i, c, s.mlp_bias),
            activation: s.activation,
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let gate = self.gate_proj.forward(x);
        let gate = match self.activation {
            Activation::Silu => gate.silu(),
            Activation::GeluTanh => gate.gelu("tanh"),
        };
        self.down_proj.forward(&(gate * self.up_proj.forward(x)))
    }
}

/// Norms around attention and MLP; Gemma's sandwich adds the two `post_*` ones.
#[derive(Debug)]
pub struct Block {
    input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention output.
    post_attention_layernorm: RmsNorm,
    /// Gemma only: (pre_feedforward_layernorm, post_feedforward_layernorm).
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(p: nn::Path, s: &DecoderSpec) -> Self {
        let c = s.hidden_size;
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", c, s),
            self_attn: Attention::new(&p / "self_attn", s),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", c, s),
            feedforward_norms: s.sandwich_norms.then(|| {
                (
                    RmsNorm::new(&p / "pre_feedforward_layernorm", c, s),
                    RmsNorm::new(&p / "post_feedforward_layernorm", c, s),
                )
            }),
            mlp: Mlp::new(&p / "mlp", s),
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        inputs: &BlockInputs,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), inputs, cache, layer);
        match &self.feedforward_norms {
            None => {
                let x = x + attn;
                &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x))
            }
            Some((pre, post)) => {
                let x = x + self.post_attention_layernorm.forward(&attn);
                &x + post.forward(&self.mlp.forward(&pre.forward(&x)))
            }
        }
    }
}
