//! The training loop SFT, RM and DPO share: seeded batches of examples, gradient accumulation
//! over micro-batches, one optimizer step per batch, a record per step, checkpoints through
//! [`Progress`] and resumption from the newest one (the batch order is a pure function of the
//! seed, so the step number is the data position).
use serde_json::json;
use tch::{Tensor, nn};

use super::optim::{Optimizer, batches};
use crate::checkpoint::Snapshot;
use crate::error::Result;
use crate::progress::{PhaseClock, Progress};
use rlhf_spec::ResolvedTraining;

/// What a micro-batch contributes.
pub struct Micro {
    pub loss: Tensor,
    /// The algorithm's own metric (RM: accuracy), averaged like the loss.
    pub metric: f64,
    /// Positions in the padded batch (the work done).
    pub tokens: i64,
}

/// The training model's prefix in checkpoints.
const MODEL: &str = "model";

/// Runs the loop. `metric` names the micro-batches' metric in the records (None: not logged);
/// `flops_per_token` is the forward-and-backward cost of one position (README: FLOP formula).
/// Returns the losses of the steps run by this call.
pub fn run(
    vs: &nn::VarStore,
    cfg: &ResolvedTraining,
    examples: usize,
    metric: Option<&str>,
    flops_per_token: f64,
    progress: &mut Progress,
    mut micro_loss: impl FnMut(&[usize]) -> Result<Micro>,
) -> Result<Vec<f64>> {
    let mut opt = Optimizer::new(vs, cfg)?;
    if let Some(restored) = progress.resume()? {
        opt.import(MODEL, &restored.tensors, restored.step)?;
    }
    let plan = batches(examples, cfg);
    let total = plan.len() as u64;
    let mut losses = Vec::new();
    for step_batches in plan.iter().skip(opt.steps() as usize) {
        let clock = PhaseClock::start();
        let share = step_batches.len() as f64;
        let (mut loss_sum, mut metric_sum, mut tokens) = (0.0, 0.0, 0);
        for micro in step_batches {
            let out = micro_loss(micro)?;
            (&out.loss / share).backward();
            loss_sum += out.loss.double_value(&[]) / share;
            metric_sum += out.metric / share;
            tokens += out.tokens;
        }
        let step = opt.step();
        let samples = step_batches.iter().map(Vec::len).sum::<usize>() as f64;
        let mut record = json!({"step": step, "loss": loss_sum, "phases": {"train": clock.rates(samples, tokens as f64, flops_per_token * tokens as f64)}});
        if let Some(name) = metric {
            record[name] = json!(metric_sum);
        }
        progress.record(record);
        losses.push(loss_sum);
        progress.step_done(step, step == total, || {
            let mut tensors = Vec::new();
            opt.export(MODEL, &mut tensors);
            Snapshot { step, tensors, state: json!({"step": step}) }
        })?;
    }
    Ok(losses)
}
