//! Pieces every decoder-only family shares: positions and masks from the padding mask, masked
//! softmax attention, LayerNorm and nn.Linear layers, and loading an HF folder into a VarStore.
use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::hf;
use super::projection::{Layout, Projection};
use crate::error::Result;

/// Keys and values of earlier positions, per layer, each (B, n_kv, S, hs). Passed into
/// `forward` so the models stay immutable; a fresh cache means "no earlier positions".
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values of `layer`; returns all of them (past + new).
    pub fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let full = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((full.0.shallow_clone(), full.1.shallow_clone()));
        full
    }
}

/// For `t` new tokens whose `attention_mask` (B, S) covers the cached positions and the new ones:
/// positions (B, t) counting real tokens only (so left padding works, as HF's generate does it),
/// and the attention mask (B, 1, t, S): causal, and never attending to padding.
pub fn positions_and_mask(t: i64, attention_mask: &Tensor) -> (Tensor, Tensor) {
    let (b, s) = attention_mask.size2().expect("attention_mask is (B, S)");
    let keep = attention_mask.to_kind(Kind::Bool);
    let past = s - t;
    let positions = (keep.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1)
        .clamp_min(0)
        .narrow(1, past, t);
    // Query i (absolute position past + i) sees keys 0 ..= past + i.
    let causal = Tensor::ones([t, s], (Kind::Bool, attention_mask.device())).tril(past);
    let mask = causal
        .view([1, 1, t, s])
        .logical_and(&keep.view([b, 1, 1, s]));
    (positions, mask)
}

/// softmax(q k^T / sqrt(d)) v over heads: q is (B, nh, T, hs), k and v (B, nh, S, hs), `mask` (B, 1, T, S).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let hs = q.size()[3];
    attend_scaled(q, k, v, mask, (hs as f64).powf(-0.5), None)
}

/// softmax(softcap(q k^T * scale)) v, where softcap(s) = cap * tanh(s / cap) when a cap is given
/// (Gemma 2). Masked scores get the most negative finite value (as HF does), so fully masked rows
/// give no NaN.
pub fn attend_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor {
    let mut scores = (q.matmul(&k.transpose(-2, -1)) * scale).to_kind(Kind::Float); // (B, nh, T, S)
    if let Some(cap) = softcap {
        scores = (scores / cap).tanh() * cap;
    }
    masked_softmax_times(scores, mask, v)
}

/// softmax(q k^T * scale + bias) v, `bias` broadcasting to the scores (B, nh, T, S) and added in
/// q's dtype (BLOOM's ALiBi, as HF adds it).
pub fn attend_biased(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    bias: &Tensor,
) -> Tensor {
    let scores = q.matmul(&k.transpose(-2, -1)) * scale + bias.to_kind(q.kind()); // (B, nh, T, S)
    masked_softmax_times(scores.to_kind(Kind::Float), mask, v)
}

/// softmax(`scores`) v with masked scores at the most negative finite value.
fn masked_softmax_times(scores: Tensor, mask: &Tensor, v: &Tensor) -> Tensor {
    // In fp32 (masking with f32::MIN does not fit lower precisions).
    let probs = scores
        .masked_fill(&mask.logical_not(), f32::MIN as f64)
        .softmax(-1, Kind::Float)
        .to_kind(v.kind());
    probs.matmul(v) // (B, nh, T, hs)
}

/// `mask` (B, 1, t, S) from [`positions_and_mask`] narrowed to a sliding window: query i (at
/// index S - t + i) also sees no key `window` or more indices before it (HF's rule).
pub fn sliding_window(mask: &Tensor, window: i64) -> Tensor {
    let (_, _, t, s) = mask.size4().expect("mask is (B, 1, T, S)");
    let past = s - t;
    let band = Tensor::ones([t, s], (Kind::Bool, mask.device())).triu(past - window + 1);
    mask.logical_and(&band.view([1, 1, t, s]))
}

/// torch.nn.LayerNorm over the last dimension; `weight` (ones) and `bias` (zeros) only when
/// `affine`.
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64, affine: bool) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            elementwise_affine: affine,
            ..Default::default()
        },
    )
}

/// torch.nn.Linear (weight [out, in]) initialised normal(0, `std`), biases zero, as HF does.
pub fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool, std: f64) -> Projection {
    let init = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    Projection::new(p, d_in, d_out, Layout::OutIn, bias, init)
}

/// Rows of `table` (N, C) for `ids` (B, T) -> (B, T, C).
pub fn embed(table: &Tensor, ids: &Tensor) -> Tensor {
    Tensor::embedding(table, ids, -1, false, false)
}

/// (B, nh, T, hs) -> (B, T, nh x hs)
pub fn merge_heads(y: &Tensor) -> Tensor {
    let (b, nh, t, hs) = y.size4().expect("(B, nh, T, hs)");
    y.transpose(1, 2).contiguous().view([b, t, nh * hs])
}

/// Copies an HF folder's weights into `vs`. `rename` maps a file's tensor name to the variable
/// name, or None for tensors that are not parameters here (buffers, tied copies).
pub fn load_into(
    vs: &nn::VarStore,
    dir: &Path,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let weights: BTreeMap<String, Tensor> = hf::read_weights(dir)?
        .into_iter()
        .filter_map(|(name, t)| Some((rename(&name)?, t)))
        .collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    hf::copy_into(&vars, &weights, dir)
}

/// Every variable of `vs` by name, sorted (what a saved folder holds).
pub fn named_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}
