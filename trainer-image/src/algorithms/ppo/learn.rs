//! The learning half of a PPO round: several epochs of clipped policy and value updates over
//! the round's experience in micro-batches, plus InstructGPT's optional pretraining (ptx) loss.
use tch::{Kind, Tensor};

use super::super::losses::{entropy_from_logits, masked_mean, policy_loss, sft_loss, value_loss};
use super::super::optim::Optimizer;
use super::super::{backward, continuation_logprobs};
use super::Models;
use super::experience::{Experience, critic_values, scoring_temperature};
use crate::batch::SequenceBatch;
use crate::error::Result;
use rlhf_spec::ResolvedPpo;

/// Mean losses and statistics of one learning phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LearnStats {
    pub policy_loss: f64,
    pub value_loss: f64,
    pub ptx_loss: Option<f64>,
    pub clip_fraction: f64,
    pub entropy: f64,
    /// Positions trained on by the actor's ptx loss (for the FLOP count).
    pub ptx_tokens: i64,
}

/// Rows `idx` of a (B, ...) tensor.
fn rows(t: &Tensor, idx: &Tensor) -> Tensor {
    t.index_select(0, idx)
}

/// Mean entropy over the scored positions of `logits` (B, N, V). Only when it is in the loss
/// does it keep a graph: otherwise a (B, N, V) log-softmax would be held for backward just for
/// the metric.
pub(super) fn mean_entropy(logits: &Tensor, mask: &Tensor, in_loss: bool) -> Tensor {
    let entropy = || masked_mean(&entropy_from_logits(logits), mask, None);
    if in_loss {
        entropy()
    } else {
        tch::no_grad(entropy)
    }
}

/// Runs `ppo_epochs` passes over `exp` in micro-batches of `micro`. Losses are scaled by
/// `loss_scale` before backward (1 / world: the strategy sums the ranks' gradients). `ptx_batch`
/// gives the pretraining batch for each actor update when `ptxCoef` > 0.
pub fn learn(
    m: &Models<'_>,
    exp: &Experience,
    (actor_opt, critic_opt): (&mut Optimizer, &mut Optimizer),
    ppo: &ResolvedPpo,
    micro: i64,
    loss_scale: f64,
    mut ptx_batch: impl FnMut() -> Result<Option<SequenceBatch>>,
) -> Result<LearnStats> {
    let b = exp.sequences.size()[0];
    let temperature = scoring_temperature(&ppo.generation);
    let (mut sums, mut ptx_sum, mut ptx_tokens, mut count) = ([0.0; 4], 0.0, 0, 0.0f64);
    for _ in 0..ppo.ppo_epochs {
        for start in (0..b).step_by(micro as usize) {
            let idx = Tensor::arange_start(
                start,
                (start + micro).min(b),
                (Kind::Int64, exp.sequences.device()),
            );
            let (seq, attn, mask) = (
                rows(&exp.sequences, &idx),
                rows(&exp.attention_mask, &idx),
                rows(&exp.mask, &idx),
            );
            let (logp, logits) =
                continuation_logprobs(m.actor, &seq, &attn, exp.prompt_len, temperature);
            let (pl, clip, _) = policy_loss(
                &logp,
                &rows(&exp.logp, &idx),
                &rows(&exp.advantages, &idx),
                &mask,
                ppo.clip_range,
            );
            let entropy = mean_entropy(&logits, &mask, ppo.entropy_coef != 0.0);
            let mut actor_loss = if ppo.entropy_coef != 0.0 {
                &pl - &entropy * ppo.entropy_coef
            } else {
                pl.shallow_clone()
            };
            if let Some(batch) = ptx_batch()? {
                let ptx = sft_loss(
                    &m.actor
                        .logits(&batch.input_ids, Some(&batch.attention_mask)),
                    &batch.input_ids,
                    &batch.loss_mask,
                );
                ptx_sum += ptx.double_value(&[]);
                ptx_tokens += batch.input_ids.numel() as i64;
                actor_loss += ptx * ppo.ptx_coef;
            }
            backward(
                &(actor_loss * (loss_scale * actor_opt.loss_scale())),
                &[m.actor],
            );
            actor_opt.step()?;
            let values = critic_values(m.critic, &seq, &attn, exp.prompt_len);
            let vl = value_loss(
                &values,
                &rows(&exp.values, &idx),
                &rows(&exp.returns, &idx),
                &mask,
                ppo.value_clip_range,
            );
            backward(
                &(&vl * (loss_scale * critic_opt.loss_scale())),
                &[m.critic.lm.as_ref()],
            );
            critic_opt.step()?;
            for (s, v) in sums.iter_mut().zip([&pl, &vl, &clip, &entropy]) {
                *s += v.double_value(&[]);
            }
            count += 1.0;
        }
    }
    let [policy_loss, value_loss, clip_fraction, entropy] = sums.map(|s| s / count.max(1.0));
    let ptx_loss = (ptx_tokens > 0).then(|| ptx_sum / count.max(1.0));
    Ok(LearnStats {
        policy_loss,
        value_loss,
        ptx_loss,
        clip_fraction,
        entropy,
        ptx_tokens,
    })
}
