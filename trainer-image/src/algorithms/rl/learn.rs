//! The learning half of a round: `rl.updateEpochs` passes over the round's experience, the rows
//! reshuffled each pass from the round's own seed (not the stream that picks prompts: a shuffle
//! of this rank's rows draws as many numbers as it has rows, which depends on the world size)
//! and taken in optimizer steps of `training.batchSize` rows over all ranks, each accumulated
//! from micro-batches; the clipped policy loss (plus KL in the loss, entropy bonus and
//! InstructGPT's ptx loss when configured) and, for PPO, the critic's value loss. Losses are
//! normalised by the step's token (or row) count over every rank, so N ranks x accumulation
//! steps == one rank with the whole batch.
use tch::{Kind, Tensor};

use super::super::losses::{
    clipped_surrogate, entropy_from_logits, kl_penalty, masked_mean, masked_sum, sft_loss,
    value_loss,
};
use super::super::optim::Optimizer;
use super::super::{backward, continuation_logprobs};
use super::Models;
use super::experience::{Experience, critic_values, scoring_temperature};
use crate::batch::SequenceBatch;
use crate::distributed::Dist;
use crate::error::Result;
use crate::rng::SplitMix64;
use rlhf_spec::{LossAggregation, ResolvedPpo, ResolvedRl};

/// Mean losses and statistics of one learning phase. The losses are this rank's share of each
/// step's global loss (summed over ranks they give the loss), the rest this rank's means.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LearnStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub ptx_loss: Option<f64>,
    pub clip_low: f64,
    pub clip_high: f64,
    pub entropy: f64,
    /// Positions trained on by the actor's ptx loss (for the FLOP count).
    pub ptx_tokens: i64,
}

/// How the round's rows are cut: per rank, rows per optimizer step and per forward pass.
#[derive(Clone, Copy, Debug)]
pub struct StepShape {
    pub rows_per_step: i64,
    pub micro: i64,
}

/// Rows `idx` of a (B, ...) tensor.
fn rows(t: &Tensor, idx: &Tensor) -> Tensor {
    t.index_select(0, idx)
}

/// Per-token entropy (B, N) of `logits`; it keeps a graph only when it is in the loss
/// (otherwise a (B, N, V) log-softmax would be held for backward just for the metric).
pub(super) fn token_entropy(logits: &Tensor, in_loss: bool) -> Tensor {
    if in_loss {
        entropy_from_logits(logits)
    } else {
        tch::no_grad(|| entropy_from_logits(logits))
    }
}

/// A seeded permutation of 0..n (Fisher-Yates).
fn shuffled(n: usize, rng: &mut SplitMix64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// The actor's loss is a sum over tokens divided by the step's global count of tokens
/// (tokenMean) or rows with a response token (sequenceMean, each row's tokens averaged first).
fn aggregate(per_token: &Tensor, mask: &Tensor, how: LossAggregation, global: f64) -> Tensor {
    match how {
        LossAggregation::TokenMean => masked_sum(per_token, mask, None) / global,
        LossAggregation::SequenceMean => {
            masked_mean(per_token, mask, Some(1)).sum(Kind::Float) / global
        }
    }
}

/// The step's normalisers over all ranks: (tokens, rows with a token) of the loss mask.
fn global_counts(loss_mask: &Tensor, dist: &Dist) -> Result<(f64, f64)> {
    let per_row = loss_mask.sum_dim_intlist(1, false, Kind::Double);
    let local = [
        per_row.sum(Kind::Double).double_value(&[]),
        per_row.gt(0.0).sum(Kind::Double).double_value(&[]),
    ];
    let [tokens, rows] = <[f64; 2]>::try_from(dist.sum(&local)?).expect("two sums");
    Ok((tokens, rows))
}

/// What learning needs besides the experience.
pub struct LearnSettings<'a> {
    pub rl: &'a ResolvedRl,
    pub ppo: Option<&'a ResolvedPpo>,
    pub aggregation: LossAggregation,
    pub shape: StepShape,
    pub kl_coef: f64,
}

/// Runs the learning phase on `exp`; `critic_opt` is PPO's; epoch e's shuffle is seeded by
/// `shuffle_seed` and e. `ptx_batch` gives the pretraining batch for each micro-batch when
/// `ptxCoef` > 0.
pub fn learn(
    m: &Models<'_>,
    exp: &Experience,
    (actor_opt, mut critic_opt): (&mut Optimizer, Option<&mut Optimizer>),
    s: &LearnSettings<'_>,
    shuffle_seed: u64,
    dist: &Dist,
    mut ptx_batch: impl FnMut() -> Result<Option<SequenceBatch>>,
) -> Result<LearnStats> {
    let rl = s.rl;
    let device = exp.sequences.device();
    let temperature = scoring_temperature(&rl.generation);
    let in_loss_kl = (!rl.kl_in_reward && s.kl_coef > 0.0).then_some(s.kl_coef);
    let entropy_in_loss = rl.entropy_coef != 0.0;
    let (mut stats, mut micro_count, mut steps, mut ptx_sum) =
        (LearnStats::default(), 0.0, 0.0, 0.0);
    let micros_per_step = (s.shape.rows_per_step / s.shape.micro).max(1) as f64;
    let ranks = dist.world() as f64;
    for epoch in 0..rl.update_epochs {
        let mut rng = SplitMix64(SplitMix64::derive(shuffle_seed, u64::from(epoch)));
        let order = shuffled(exp.rows() as usize, &mut rng);
        for step_rows in order.chunks(s.shape.rows_per_step as usize) {
            let step_idx = Tensor::from_slice(step_rows).to_device(device);
            let (tokens, active_rows) = global_counts(&rows(&exp.loss_mask, &step_idx), dist)?;
            if tokens == 0.0 {
                continue; // every rank sees the same global count, so all skip together
            }
            let actor_norm = match s.aggregation {
                LossAggregation::TokenMean => tokens,
                LossAggregation::SequenceMean => active_rows,
            };
            for micro_rows in step_rows.chunks(s.shape.micro as usize) {
                let idx = Tensor::from_slice(micro_rows).to_device(device);
                let (seq, attn, mask) = (
                    rows(&exp.sequences, &idx),
                    rows(&exp.attention_mask, &idx),
                    rows(&exp.loss_mask, &idx),
                );
                let (logp, logits) =
                    continuation_logprobs(m.actor, &seq, &attn, exp.prompt_len, temperature);
                let surrogate = clipped_surrogate(
                    &logp,
                    &rows(&exp.logp, &idx),
                    &rows(&exp.advantages, &idx),
                    &mask,
                    (rl.clip_range, rl.clip_range_high),
                );
                let entropy = token_entropy(&logits, entropy_in_loss);
                let mut per_token = surrogate.loss.shallow_clone();
                if let Some(coef) = in_loss_kl {
                    let kl = kl_penalty(&logp, &rows(&exp.ref_logp, &idx), rl.kl_estimator);
                    per_token += kl * coef;
                }
                if entropy_in_loss {
                    per_token -= &entropy * rl.entropy_coef;
                }
                let policy = aggregate(&surrogate.loss, &mask, s.aggregation, actor_norm);
                let mut actor_loss = aggregate(&per_token, &mask, s.aggregation, actor_norm);
                if let Some(batch) = ptx_batch()? {
                    let ptx = sft_loss(
                        &m.actor
                            .logits(&batch.input_ids, Some(&batch.attention_mask)),
                        &batch.input_ids,
                        &batch.loss_mask,
                    );
                    ptx_sum += ptx.double_value(&[]);
                    stats.ptx_tokens += batch.input_ids.numel() as i64;
                    actor_loss += ptx * (rl.ptx_coef / (micros_per_step * ranks));
                }
                backward(&(actor_loss * actor_opt.loss_scale()), &[m.actor]);
                if let (Some(critic), Some(ppo), Some(opt)) = (m.critic, s.ppo, &mut critic_opt) {
                    let values = critic_values(critic.head, &seq, &attn, exp.prompt_len);
                    let per_token = value_loss(
                        &values,
                        &rows(exp.values.as_ref().expect("PPO values"), &idx),
                        &rows(exp.returns.as_ref().expect("PPO returns"), &idx),
                        &mask,
                        ppo.value_clip_range,
                    );
                    let vl = masked_sum(&per_token, &mask, None) / tokens;
                    stats.value_loss += vl.double_value(&[]);
                    backward(&(vl * opt.loss_scale()), &[critic.head.lm.as_ref()]);
                }
                stats.policy_loss += policy.double_value(&[]);
                stats.clip_low += surrogate.clipped_low.double_value(&[]);
                stats.clip_high += surrogate.clipped_high.double_value(&[]);
                stats.entropy += masked_mean(&entropy.detach(), &mask, None).double_value(&[]);
                micro_count += 1.0;
            }
            actor_opt.step()?;
            if let Some(opt) = &mut critic_opt {
                opt.step()?;
            }
            steps += 1.0;
        }
    }
    let (steps, micro_count) = (f64::max(steps, 1.0), f64::max(micro_count, 1.0));
    stats.policy_loss /= steps;
    stats.value_loss /= steps;
    stats.clip_low /= micro_count;
    stats.clip_high /= micro_count;
    stats.entropy /= micro_count;
    stats.ptx_loss = (stats.ptx_tokens > 0).then(|| ptx_sum / micro_count);
    Ok(stats)
}
