//! The optimizer side every algorithm shares: AdamW with linear warm-up and gradient clipping,
//! and the order in which examples are visited.
//!
//! [`Optimizer`] is the one place a training step touches the weights: it owns the trainable
//! parameters (LoRA decides which they are), their gradients' clipping and their AdamW state.
//! Parallel strategies (gradient all-reduce for data parallelism, sharded state for ZeRO, CPU
//! placement for offload) plug in here, not in the algorithms. The state is ours rather than
//! libtorch's so that checkpoints can carry it (tch exposes no optimizer state).
use std::collections::HashMap;

use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use rlhf_spec::ResolvedTraining;

/// PyTorch's AdamW defaults (what tch's `nn::AdamW` uses too).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

struct Param {
    name: String,
    value: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct Optimizer {
    params: Vec<Param>,
    lr: f64,
    weight_decay: f64,
    warmup: u32,
    max_grad_norm: f64,
    step: u64,
}

impl Optimizer {
    /// AdamW over the trainable variables of `vs`, in name order (so checkpoints line up).
    pub fn new(vs: &nn::VarStore, cfg: &ResolvedTraining) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, value)| Param { exp_avg: value.zeros_like(), exp_avg_sq: value.zeros_like(), name, value })
            .collect();
        Ok(Self { params, lr: cfg.learning_rate, weight_decay: cfg.weight_decay, warmup: cfg.warmup_steps, max_grad_norm: cfg.max_grad_norm, step: 0 })
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning rate of step `step` (1-based): linear warm-up, then constant.
    fn lr_at(&self, step: u64) -> f64 {
        let scale = if self.warmup == 0 { 1.0 } else { (step as f64 / f64::from(self.warmup)).min(1.0) };
        self.lr * scale
    }

    /// Scales gradients so their global L2 norm is at most `max_grad_norm` (as torch does).
    fn clip_gradients(&self) {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.value.grad()).filter(Tensor::defined).collect();
        if self.max_grad_norm <= 0.0 || grads.is_empty() {
            return;
        }
        let total = grads.iter().map(|g| g.square().sum(Kind::Double)).fold(Tensor::from(0.0f64), |a, b| a + b).sqrt().double_value(&[]);
        let coef = self.max_grad_norm / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
    }

    /// Applies the accumulated gradients (clipped), clears them; returns the step number (1-based).
    pub fn step(&mut self) -> u64 {
        self.step += 1;
        self.clip_gradients();
        let lr = self.lr_at(self.step);
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        tch::no_grad(|| {
            for p in &mut self.params {
                let mut grad = p.value.grad();
                if !grad.defined() {
                    continue;
                }
                let _ = p.value.g_mul_scalar_(1.0 - lr * self.weight_decay);
                let _ = p.exp_avg.lerp_(&grad, 1.0 - BETA1);
                let _ = p.exp_avg_sq.g_mul_scalar_(BETA2);
                let _ = p.exp_avg_sq.g_add_(&(grad.square() * (1.0 - BETA2)));
                let denom = (p.exp_avg_sq.sqrt() / bias2.sqrt()) + EPS;
                let _ = p.value.g_sub_(&(&p.exp_avg / &denom * (lr / bias1)));
                let _ = grad.zero_();
            }
        });
        self.step
    }

    /// Weights and AdamW moments, named `<prefix>.<kind>.<variable>`, for a checkpoint.
    pub fn export(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for p in &self.params {
            for (kind, t) in [("weight", &p.value), ("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
                out.push((format!("{prefix}.{kind}.{}", p.name), t.detach().to_device(tch::Device::Cpu)));
            }
        }
    }

    /// Restores what [`export`](Self::export) wrote, and the step counter.
    pub fn import(&mut self, prefix: &str, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        tch::no_grad(|| {
            for p in &mut self.params {
                for (kind, target) in [("weight", &mut p.value), ("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                    let key = format!("{prefix}.{kind}.{}", p.name);
                    let saved = tensors.get(&key).ok_or_else(|| Error::invalid("<checkpoint>", format!("{key} is missing")))?;
                    if saved.size() != target.size() {
                        return Err(Error::invalid("<checkpoint>", format!("{key} has shape {:?}, the model has {:?}", saved.size(), target.size())));
                    }
                    target.copy_(saved);
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Example indices per optimizer step, each split into micro-batches: every epoch visits all
/// examples in a seeded order; a short last batch is dropped; stops at maxSteps.
pub fn batches(n: usize, cfg: &ResolvedTraining) -> Vec<Vec<Vec<usize>>> {
    let (batch, micro) = (cfg.batch_size as usize, cfg.micro_batch_size as usize);
    let mut steps = Vec::new();
    let mut rng = SplitMix64(cfg.seed);
    for _ in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize); // Fisher-Yates
        }
        for chunk in order.chunks_exact(batch) {
            steps.push(chunk.chunks(micro).map(<[usize]>::to_vec).collect());
            if cfg.max_steps.is_some_and(|m| steps.len() as u64 >= m) {
                return steps;
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests;
