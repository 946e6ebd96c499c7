//! The training loop SFT, RM and DPO share: seeded batches of examples, gradient accumulation
//! over micro-batches, one optimizer step per batch, a record per step, checkpoints through
//! [`Progress`] and resumption from the newest one (the batch order is a pure function of the
//! seed, so the step number is the data position). With several ranks each takes every
//! world-th micro-batch of a step; losses are scaled by the step's total micro-batch count, so
//! the strategy's sum over ranks is the global batch's mean.
use tch::{Tensor, nn};

use super::backward;
use super::optim::{Optimizer, batches};
use crate::checkpoint::{Snapshot, State};
use crate::error::Result;
use crate::models::CausalLm;
use crate::progress::{PhaseClock, Progress};
use crate::record::{Phases, Record};
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

/// Runs the loop over the trained `models` (their checkpointed forwards are completed after each
/// backward). `metric` puts the micro-batches' metric into the step's record (None: not logged);
/// `flops_per_token` is the forward-and-backward cost of one position (README: FLOP formula).
/// Returns the losses of the steps run by this call.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the loop
pub fn run(
    models: &[&dyn CausalLm],
    vs: &nn::VarStore,
    cfg: &ResolvedTraining,
    examples: usize,
    metric: Option<fn(&mut Record, f64)>,
    flops_per_token: f64,
    progress: &mut Progress,
    mut micro_loss: impl FnMut(&[usize]) -> Result<Micro>,
) -> Result<Vec<f64>> {
    let mut opt = Optimizer::new(vs, cfg, progress.dist())?;
    let (rank, world) = (progress.dist().rank(), progress.dist().world());
    if let Some(restored) = progress.resume()? {
        opt.import(MODEL, &restored.tensors, restored.step())?;
    }
    let plan = batches(examples, cfg);
    let total = plan.len() as u64;
    let mut losses = Vec::new();
    for step_batches in plan.iter().skip(opt.steps() as usize) {
        let clock = PhaseClock::start();
        let share = step_batches.len() as f64;
        let (mut loss_sum, mut metric_sum, mut tokens) = (0.0, 0.0, 0i64);
        for micro in step_batches.iter().skip(rank).step_by(world) {
            let out = micro_loss(micro)?;
            backward(&(&out.loss * (opt.loss_scale() / share)), models);
            loss_sum += out.loss.double_value(&[]) / share;
            metric_sum += out.metric / share;
            tokens += out.tokens;
        }
        let step = opt.step()?;
        let [loss_sum, metric_sum, tokens] =
            <[f64; 3]>::try_from(
                progress
                    .dist()
                    .sum(&[loss_sum, metric_sum, tokens as f64])?,
            )
            .expect("three sums");
        let samples = step_batches.iter().map(Vec::len).sum::<usize>() as f64;
        let mut record = Record {
            step,
            loss: Some(loss_sum),
            optimizer_state_bytes: Some(opt.state_bytes()),
            phases: Some(Phases {
                train: Some(clock.rates(samples, tokens, flops_per_token * tokens)),
                ..Phases::default()
            }),
            ..Record::default()
        };
        if let Some(set) = metric {
            set(&mut record, metric_sum);
        }
        progress.record(record);
        losses.push(loss_sum);
        progress.step_done(step, step == total, || {
            let mut tensors = Vec::new();
            opt.export(MODEL, &mut tensors)?;
            Ok(Snapshot {
                tensors,
                state: State::supervised(step),
            })
        })?;
    }
    Ok(losses)
}
