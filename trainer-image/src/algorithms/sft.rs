//! Supervised fine-tuning: masked next-token cross-entropy on the response tokens.
use tch::{Device, nn};

use super::losses::sft_loss;
use super::supervised::{self, Micro};
use crate::batch::{SequenceBatch, join, pad};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::models::{CausalLm, parameter_count};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use rlhf_spec::ResolvedTraining;

/// (prompt, response) of SFT examples (also the ptx data of PPO).
pub fn pairs(examples: &[Example]) -> Result<Vec<(&str, &str)>> {
    examples
        .iter()
        .map(|e| match e {
            Example::Sft { prompt, response } => Ok((prompt.as_str(), response.as_str())),
            other => Err(Error::invalid(
                "<dataset>",
                format!("an sft stage needs prompt/response examples, got {other:?}"),
            )),
        })
        .collect()
}

fn batch_of(
    tok: &Tokenizer,
    pairs: &[(&str, &str)],
    max_length: u32,
    device: Device,
) -> Result<SequenceBatch> {
    let rows = pairs
        .iter()
        .map(|(p, r)| join(tok, p, r, max_length as usize))
        .collect::<Result<Vec<_>>>()?;
    Ok(pad(&rows, i64::from(tok.pad_token_id), device))
}

/// Trains `model` (whose weights are `vs`) on SFT examples, reporting each step to `progress`;
/// returns the losses of the steps this call ran.
pub fn train(
    model: &dyn CausalLm,
    vs: &nn::VarStore,
    tok: &Tokenizer,
    examples: &[Example],
    cfg: &ResolvedTraining,
    device: Device,
    progress: &mut Progress,
) -> Result<Vec<f64>> {
    let pairs = pairs(examples)?;
    let flops_per_token = 6.0 * parameter_count(vs) as f64;
    supervised::run(
        &[model],
        vs,
        cfg,
        pairs.len(),
        None,
        flops_per_token,
        progress,
        |micro| {
            let picked: Vec<_> = micro.iter().map(|&i| pairs[i]).collect();
            let b = batch_of(tok, &picked, cfg.max_length, device)?;
            let logits = model.logits(&b.input_ids, Some(&b.attention_mask));
            Ok(Micro {
                loss: sft_loss(&logits, &b.input_ids, &b.loss_mask),
                metric: 0.0,
                tokens: b.input_ids.numel() as i64,
            })
        },
    )
}

/// Mean response-token loss on `examples` (held out), in batches of `batch`.
pub fn held_out_loss(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    examples: &[Example],
    max_length: u32,
    batch: usize,
    device: Device,
) -> Result<f64> {
    let pairs = pairs(examples)?;
    let mut total = 0.0;
    for chunk in pairs.chunks(batch.max(1)) {
        let b = batch_of(tok, chunk, max_length, device)?;
        let loss = tch::no_grad(|| {
            sft_loss(
                &model.logits(&b.input_ids, Some(&b.attention_mask)),
                &b.input_ids,
                &b.loss_mask,
            )
        });
        total += loss.double_value(&[]) * chunk.len() as f64;
    }
    Ok(total / pairs.len() as f64)
}
