//! The optimizer side every algorithm shares: AdamW with linear warm-up and gradient clipping,
//! and the order in which examples are visited.
//!
//! [`Optimizer`] is the one place a training step touches the weights: it owns the trainable
//! variables (LoRA decides which they are) and hands each step to a [`DistributedStep`]
//! (strategy.rs): one process, `ddp`, `zero1` or `zero2`. The AdamW state is ours rather than
//! libtorch's so that checkpoints carry it and ZeRO can shard it (tch exposes neither).
pub mod adamw;
pub mod loss_scale;
pub mod strategy;

use std::collections::HashMap;

use tch::{Tensor, nn};

use crate::distributed::Dist;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use loss_scale::LossScaler;
use rlhf_spec::{ResolvedTraining, Strategy};
use strategy::{DistributedStep, Replicated, Sharded, StepSettings};

/// Variable names (Hugging Face's) of embedding tables: GPT-2's token and position embeddings
/// (its LM head is the token table), Llama's and OPT's token embedding (also the head when
/// tied), OPT's position embedding and BLOOM's token embedding.
const EMBEDDINGS: [&str; 5] = [
    "wte.weight",
    "wpe.weight",
    "embed_tokens.weight",
    "embed_positions.weight",
    "word_embeddings.weight",
];

fn is_embedding(name: &str) -> bool {
    EMBEDDINGS
        .iter()
        .any(|e| name == *e || name.ends_with(&format!(".{e}")))
}

/// Whether weight decay applies to a variable: never to biases and norm weights (1-D), to
/// embeddings only when asked (decaying rare tokens' rows towards 0 hurts them).
fn decays(name: &str, value: &Tensor, embeddings: bool) -> bool {
    value.dim() >= 2 && (embeddings || !is_embedding(name))
}

pub struct Optimizer {
    params: Vec<(String, Tensor)>,
    strategy: Box<dyn DistributedStep>,
    /// fp16 weights only.
    scaler: Option<LossScaler>,
    lr: f64,
    weight_decay: f64,
    adam_epsilon: f64,
    warmup: u32,
    max_grad_norm: f64,
    step: u64,
}

impl Optimizer {
    /// AdamW over the trainable variables of `vs`, in name order, shared among `dist`'s ranks
    /// by its strategy. Ranks start from rank 0's weights.
    pub fn new(vs: &nn::VarStore, cfg: &ResolvedTraining, dist: &Dist) -> Result<Self> {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if params.is_empty() {
            return Err(Error::invalid("<model>", "no trainable weights"));
        }
        tch::no_grad(|| params.iter().try_for_each(|(_, v)| dist.broadcast(v)))?;
        let decays: Vec<bool> = params
            .iter()
            .map(|(name, v)| decays(name, v, cfg.weight_decay_embeddings))
            .collect();
        let offload = dist.offload_optimizer;
        let strategy: Box<dyn DistributedStep> = match (&dist.group, dist.strategy) {
            (None, _) => Box::new(Replicated::new(&params, &decays, None, offload)),
            (Some(g), Strategy::Ddp) => {
                Box::new(Replicated::new(&params, &decays, Some(g.clone()), offload))
            }
            (Some(g), Strategy::Zero1) => {
                Box::new(Sharded::new(&params, &decays, g.clone(), false, offload))
            }
            (Some(g), Strategy::Zero2) => {
                Box::new(Sharded::new(&params, &decays, g.clone(), true, offload))
            }
        };
        let scaler = params
            .iter()
            .any(|(_, v)| v.kind() == tch::Kind::Half)
            .then(LossScaler::default);
        Ok(Self {
            params,
            strategy,
            scaler,
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            adam_epsilon: cfg.adam_epsilon,
            warmup: cfg.warmup_steps,
            max_grad_norm: cfg.max_grad_norm,
            step: 0,
        })
    }

    /// What the loss must be multiplied by before backward (fp16 loss scaling; else 1).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.as_ref().map_or(1.0, LossScaler::scale)
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Bytes of optimizer state this rank holds.
    pub fn state_bytes(&self) -> i64 {
        self.strategy.state_bytes()
    }

    /// The learning rate of step `step` (1-based): linear warm-up, then constant.
    fn lr_at(&self, step: u64) -> f64 {
        let scale = if self.warmup == 0 {
            1.0
        } else {
            (step as f64 / f64::from(self.warmup)).min(1.0)
        };
        self.lr * scale
    }

    /// Applies the accumulated gradients (combined over ranks, clipped), clears them; returns
    /// the step number (1-based).
    pub fn step(&mut self) -> Result<u64> {
        self.step += 1;
        let settings = StepSettings {
            adam: adamw::Hyper {
                lr: self.lr_at(self.step),
                weight_decay: self.weight_decay,
                eps: self.adam_epsilon,
                t: self.step,
            },
            max_grad_norm: self.max_grad_norm,
            loss_scale: self.loss_scale(),
        };
        let applied = self.strategy.step(&self.params, &settings)?;
        if let Some(scaler) = &mut self.scaler {
            scaler.update(applied);
        }
        if !applied {
            eprintln!(
                "rlhf-trainer: step {} skipped: fp16 gradients overflowed; loss scale now {}",
                self.step,
                self.loss_scale()
            );
        }
        Ok(self.step)
    }

    /// Weights and AdamW moments, named `<prefix>.<kind>.<variable>`, for a checkpoint (every
    /// rank must call it: under ZeRO the moments are gathered).
    pub fn export(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        if let Some(scaler) = &self.scaler {
            out.push((
                format!("{prefix}.loss_scale"),
                Tensor::from_slice(&[scaler.scale()]),
            ));
        }
        self.strategy.export_state(&self.params, prefix, out)
    }

    /// Restores what [`export`](Self::export) wrote, and the step counter.
    pub fn import(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        tch::no_grad(|| {
            for (name, value) in &self.params {
                let key = format!("{prefix}.weight.{name}");
                let saved = tensors
                    .get(&key)
                    .ok_or_else(|| Error::invalid("<checkpoint>", format!("{key} is missing")))?;
                if saved.size() != value.size() {
                    return Err(Error::invalid(
                        "<checkpoint>",
                        format!(
                            "{key} has shape {:?}, the model has {:?}",
                            saved.size(),
                            value.size()
                        ),
                    ));
                }
                value.shallow_clone().copy_(saved);
            }
            Ok(())
        })?;
        self.strategy.import_state(&self.params, prefix, tensors)?;
        if let (Some(scaler), Some(saved)) = (
            &mut self.scaler,
            tensors.get(&format!("{prefix}.loss_scale")),
        ) {
            scaler.set_scale(saved.double_value(&[0]));
        }
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
