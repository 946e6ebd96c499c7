//! The optimizer side every algorithm shares: AdamW with linear warm-up, gradient clipping and
//! accumulation, and the order in which examples are visited.
use tch::nn::{self, OptimizerConfig};

use crate::error::Result;
use crate::rng::SplitMix64;
use rlhf_spec::ResolvedTraining;

pub struct Optimizer {
    opt: nn::Optimizer,
    lr: f64,
    warmup: u32,
    max_grad_norm: f64,
    step: u64,
}

impl Optimizer {
    pub fn new(vs: &nn::VarStore, cfg: &ResolvedTraining) -> Result<Self> {
        let opt = nn::AdamW { wd: cfg.weight_decay, ..Default::default() }.build(vs, cfg.learning_rate)?;
        Ok(Self { opt, lr: cfg.learning_rate, warmup: cfg.warmup_steps, max_grad_norm: cfg.max_grad_norm, step: 0 })
    }

    /// Applies the accumulated gradients (clipped), clears them; returns the step number (1-based).
    pub fn step(&mut self) -> u64 {
        self.step += 1;
        let scale = if self.warmup == 0 { 1.0 } else { (self.step as f64 / self.warmup as f64).min(1.0) };
        self.opt.set_lr(self.lr * scale);
        if self.max_grad_norm > 0.0 {
            self.opt.clip_grad_norm(self.max_grad_norm);
        }
        self.opt.step();
        self.opt.zero_grad();
        self.step
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

/// The training loop every algorithm shares. `micro_loss` returns a micro-batch's loss and one
/// metric for the example indices it is given; gradients accumulate over a step's micro-batches,
/// then the optimizer steps. `on_step(step, loss, metric)` sees the step means. Returns the losses.
pub fn run(
    vs: &nn::VarStore,
    cfg: &ResolvedTraining,
    examples: usize,
    mut micro_loss: impl FnMut(&[usize]) -> Result<(tch::Tensor, f64)>,
    mut on_step: impl FnMut(u64, f64, f64),
) -> Result<Vec<f64>> {
    let mut opt = Optimizer::new(vs, cfg)?;
    let mut losses = Vec::new();
    for step_batches in batches(examples, cfg) {
        let share = step_batches.len() as f64;
        let (mut loss_sum, mut metric_sum) = (0.0, 0.0);
        for micro in &step_batches {
            let (loss, metric) = micro_loss(micro)?;
            (&loss / share).backward();
            loss_sum += loss.double_value(&[]) / share;
            metric_sum += metric / share;
        }
        let step = opt.step();
        losses.push(loss_sum);
        on_step(step, loss_sum, metric_sum);
    }
    Ok(losses)
}
