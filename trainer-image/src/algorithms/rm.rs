//! Reward model: pairwise (Bradley-Terry) loss on chosen vs rejected responses.
use tch::{Device, Tensor, nn};

use super::halves;
use super::losses::pairwise_rm_loss;
use super::supervised::{self, Micro};
use crate::batch::{SequenceBatch, join, pad};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::models::heads::ScalarHead;
use crate::models::parameter_count;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use rlhf_spec::ResolvedTraining;

/// (prompt, chosen, rejected) of preference examples.
pub fn preference_triples(examples: &[Example]) -> Result<Vec<(&str, &str, &str)>> {
    examples
        .iter()
        .map(|e| match e {
            Example::Preference {
                prompt,
                chosen,
                rejected,
            } => Ok((prompt.as_str(), chosen.as_str(), rejected.as_str())),
            other => Err(Error::invalid(
                "<dataset>",
                format!("a preference stage needs prompt/chosen/rejected examples, got {other:?}"),
            )),
        })
        .collect()
}

/// Chosen rows first, then the rejected rows, in one right-padded batch (one forward pass).
pub fn pair_batch(
    tok: &Tokenizer,
    triples: &[(&str, &str, &str)],
    max_length: u32,
    device: Device,
) -> Result<SequenceBatch> {
    let chosen = triples
        .iter()
        .map(|(p, c, _)| join(tok, p, c, max_length as usize));
    let rejected = triples
        .iter()
        .map(|(p, _, r)| join(tok, p, r, max_length as usize));
    let rows = chosen.chain(rejected).collect::<Result<Vec<_>>>()?;
    Ok(pad(&rows, i64::from(tok.pad_token_id), device))
}

/// The pair batch of the triples at `indices` (a micro-batch).
pub fn micro_pair_batch(
    tok: &Tokenizer,
    triples: &[(&str, &str, &str)],
    indices: &[usize],
    max_length: u32,
    device: Device,
) -> Result<SequenceBatch> {
    let picked: Vec<_> = indices.iter().map(|&i| triples[i]).collect();
    pair_batch(tok, &picked, max_length, device)
}

/// Scores (chosen (B), rejected (B)) of a pair batch.
fn scores(rm: &ScalarHead, batch: &SequenceBatch) -> (Tensor, Tensor) {
    halves(&rm.last_token(&batch.input_ids, &batch.attention_mask))
}

/// Trains the reward model, reporting each step (loss, batch accuracy) to `progress`.
pub fn train(
    rm: &ScalarHead,
    vs: &nn::VarStore,
    tok: &Tokenizer,
    examples: &[Example],
    cfg: &ResolvedTraining,
    device: Device,
    progress: &mut Progress,
) -> Result<Vec<f64>> {
    let triples = preference_triples(examples)?;
    let flops_per_token = 6.0 * parameter_count(vs) as f64;
    supervised::run(
        &[rm.lm.as_ref()],
        vs,
        cfg,
        triples.len(),
        Some(|record, accuracy| record.rm_accuracy = Some(accuracy)),
        flops_per_token,
        progress,
        |micro| {
            let b = micro_pair_batch(tok, &triples, micro, cfg.max_length, device)?;
            let (chosen, rejected) = scores(rm, &b);
            let (loss, accuracy) = pairwise_rm_loss(&chosen, &rejected);
            Ok(Micro {
                loss,
                metric: accuracy.double_value(&[]),
                tokens: b.input_ids.numel() as i64,
            })
        },
    )
}

/// Pairwise accuracy on `examples` (held-out pairs), in batches of `batch`.
pub fn accuracy(
    rm: &ScalarHead,
    tok: &Tokenizer,
    examples: &[Example],
    max_length: u32,
    batch: usize,
    device: Device,
) -> Result<f64> {
    let triples = preference_triples(examples)?;
    let mut correct = 0.0;
    for chunk in triples.chunks(batch.max(1)) {
        let (chosen, rejected) =
            tch::no_grad(|| pair_batch(tok, chunk, max_length, device).map(|b| scores(rm, &b)))?;
        correct += chosen
            .gt_tensor(&rejected)
            .sum(tch::Kind::Float)
            .double_value(&[]);
    }
    Ok(correct / triples.len() as f64)
}
