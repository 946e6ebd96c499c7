//! Direct preference optimisation against a frozen reference model.
use tch::{Device, Kind, Tensor, nn};

use super::losses::{dpo_loss, masked_sum};
use super::optim;
use super::rm::{micro_pair_batch, pair_batch, preference_triples};
use super::{continuation_logprobs, halves};
use crate::batch::SequenceBatch;
use crate::data::Example;
use crate::error::Result;
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{ResolvedDpo, ResolvedTraining};

/// Sum of the response tokens' log-probs per row (B): logits at t score the token at t + 1.
pub fn sequence_logprobs(model: &dyn CausalLm, b: &SequenceBatch) -> Tensor {
    let (lp, _) = continuation_logprobs(model, &b.input_ids, &b.attention_mask, 1); // (B, T-1)
    masked_sum(&lp, &b.loss_mask.narrow(1, 1, lp.size()[1]), Some(1))
}

/// Mean implicit reward margin beta * ((pc - rc) - (pr - rr)) on `examples`, and the share of
/// pairs where it is positive.
pub fn margin(policy: &dyn CausalLm, reference: &dyn CausalLm, tok: &Tokenizer, examples: &[Example], max_length: u32, beta: f64, device: Device) -> Result<(f64, f64)> {
    let triples = preference_triples(examples)?;
    let b = pair_batch(tok, &triples, max_length, device)?;
    tch::no_grad(|| {
        let (pc, pr) = halves(&sequence_logprobs(policy, &b));
        let (rc, rr) = halves(&sequence_logprobs(reference, &b));
        let m = ((pc - rc) - (pr - rr)) * beta;
        Ok((m.mean(Kind::Float).double_value(&[]), m.gt(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])))
    })
}

/// Trains `policy` (weights `vs`) with DPO; `on_step(step, loss)` after each optimizer step.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the stage
pub fn train(
    policy: &dyn CausalLm,
    vs: &nn::VarStore,
    reference: &dyn CausalLm,
    tok: &Tokenizer,
    examples: &[Example],
    cfg: &ResolvedTraining,
    dpo: &ResolvedDpo,
    device: Device,
    mut on_step: impl FnMut(u64, f64),
) -> Result<Vec<f64>> {
    let triples = preference_triples(examples)?;
    optim::run(
        vs,
        cfg,
        triples.len(),
        |micro| {
            let b = micro_pair_batch(tok, &triples, micro, cfg.max_length, device)?;
            let (rc, rr) = tch::no_grad(|| halves(&sequence_logprobs(reference, &b)));
            let (pc, pr) = halves(&sequence_logprobs(policy, &b));
            let (loss, _, _) = dpo_loss(&pc, &pr, &rc, &rr, dpo.beta, dpo.label_smoothing);
            Ok((loss, 0.0))
        },
        |step, loss, _| on_step(step, loss),
    )
}
