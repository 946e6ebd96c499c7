//! Pieces every decoder-only family shares: positions and masks from the padding mask, masked
//! softmax attention, and loading an HF folder into a VarStore.
use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor, nn};

use super::hf;
use crate::error::Result;

/// Positions (B, T) counting real tokens only (so left padding works, as HF's generate does it),
/// and the attention mask (B, 1, T, T): causal and not attending to padding.
pub fn positions_and_mask(input_ids: &Tensor, attention_mask: Option<&Tensor>) -> (Tensor, Tensor) {
    let (b, t) = input_ids.size2().expect("input_ids are (B, T)");
    let device = input_ids.device();
    let keep = match attention_mask {
        Some(m) => m.to_kind(Kind::Bool),
        None => Tensor::ones([b, t], (Kind::Bool, device)),
    };
    let positions = (keep.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
    let mask = causal.view([1, 1, t, t]).logical_and(&keep.view([b, 1, 1, t]));
    (positions, mask)
}

/// softmax(q k^T / sqrt(d)) v over heads: q, k, v are (B, nh, T, hs), `mask` (B, 1, T, T).
/// Masked scores get the most negative finite value (as HF does), so fully masked rows give no NaN.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let hs = q.size()[3];
    let scores = q.matmul(&k.transpose(-2, -1)) / (hs as f64).sqrt(); // (B, nh, T, T)
    let probs = scores.masked_fill(&mask.logical_not(), f32::MIN as f64).softmax(-1, Kind::Float).to_kind(q.kind());
    probs.matmul(v) // (B, nh, T, hs)
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
pub fn load_into(vs: &nn::VarStore, dir: &Path, rename: impl Fn(&str) -> Option<String>) -> Result<()> {
    let weights: BTreeMap<String, Tensor> =
        hf::read_weights(dir)?.into_iter().filter_map(|(name, t)| Some((rename(&name)?, t))).collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    hf::copy_into(&vars, &weights, dir)
}

/// Every variable of `vs` by name, sorted (what a saved folder holds).
pub fn named_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}
