//! Direct preference optimisation against a frozen reference model.
use tch::{Device, Kind, Tensor, nn};

use super::losses::{dpo_loss, masked_sum};
use super::rm::{micro_pair_batch, pair_batch, preference_triples};
use super::supervised::{self, Micro};
use super::{continuation_logprobs, halves};
use crate::batch::SequenceBatch;
use crate::data::Example;
use crate::error::Result;
use crate::models::{CausalLm, parameter_count};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{ResolvedDpo, ResolvedTraining};

/// Sum of the response tokens' log-probs per row (B): logits at t score the token at t + 1.
pub fn sequence_logprobs(model: &dyn CausalLm, b: &SequenceBatch) -> Tensor {
    let (lp, _) = continuation_logprobs(model, &b.input_ids, &b.attention_mask, 1, 1.0); // (B, T-1)
    masked_sum(&lp, &b.loss_mask.narrow(1, 1, lp.size()[1]), Some(1))
}

/// Mean implicit reward margin beta * ((pc - rc) - (pr - rr)) on `examples`, and the share of
/// pairs where it is positive.
pub fn margin(
    policy: &dyn CausalLm,
    reference: &dyn CausalLm,
    tok: &Tokenizer,
    examples: &[Example],
    max_length: u32,
    beta: f64,
    device: Device,
) -> Result<(f64, f64)> {
    let triples = preference_triples(examples)?;
    let b = pair_batch(tok, &triples, max_length, device)?;
    tch::no_grad(|| {
        let (pc, pr) = halves(&sequence_logprobs(policy, &b));
        let (rc, rr) = halves(&sequence_logprobs(reference, &b));
        let m = ((pc - rc) - (pr - rr)) * beta;
        Ok((
            m.mean(Kind::Float).double_value(&[]),
            m.gt(0.0)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
        ))
    })
}

/// Trains `policy` (weights `vs`) with DPO, reporting each step to `progress`. A position costs
/// the policy's forward and backward and the reference's forward.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the stage
pub fn train(
    policy: &dyn CausalLm,
    vs: &nn::VarStore,
    reference: (&dyn CausalLm, &nn::VarStore),
    tok: &Tokenizer,
    examples: &[Example],
    cfg: &ResolvedTraining,
    dpo: &ResolvedDpo,
    device: Device,
    progress: &mut Progress,
) -> Result<Vec<f64>> {
    let triples = preference_triples(examples)?;
    let (reference, reference_vs) = reference;
    let flops_per_token =
        6.0 * parameter_count(vs) as f64 + 2.0 * parameter_count(reference_vs) as f64;
    supervised::run(
        &[policy],
        vs,
        cfg,
        triples.len(),
        None,
        flops_per_token,
        progress,
        |micro| {
            let b = micro_pair_batch(tok, &triples, micro, cfg.max_length, device)?;
            let (rc, rr) = tch::no_grad(|| halves(&sequence_logprobs(reference, &b)));
            let (pc, pr) = halves(&sequence_logprobs(policy, &b));
            let (loss, _, _) = dpo_loss(&pc, &pr, &rc, &rr, dpo.beta, dpo.label_smoothing);
            Ok(Micro {
                loss,
                metric: 0.0,
                tokens: b.input_ids.numel() as i64,
            })
        },
    )
}
