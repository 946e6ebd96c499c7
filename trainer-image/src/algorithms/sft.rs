//! Supervised fine-tuning: masked next-token cross-entropy on the response tokens.
use tch::{Device, nn};

use super::losses::sft_loss;
use super::optim;
use crate::batch::{join, pad};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::models::CausalLm;
use crate::tokenizer::Tokenizer;
use rlhf_spec::ResolvedTraining;

/// Trains `model` (whose weights are `vs`) on SFT examples; calls `on_step(step, loss)` after
/// every optimizer step and returns the losses.
pub fn train(
    model: &dyn CausalLm,
    vs: &nn::VarStore,
    tok: &Tokenizer,
    examples: &[Example],
    cfg: &ResolvedTraining,
    device: Device,
    mut on_step: impl FnMut(u64, f64),
) -> Result<Vec<f64>> {
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .map(|e| match e {
            Example::Sft { prompt, response } => Ok((prompt.as_str(), response.as_str())),
            other => Err(Error::invalid("<dataset>", format!("an sft stage needs prompt/response examples, got {other:?}"))),
        })
        .collect::<Result<_>>()?;
    optim::run(
        vs,
        cfg,
        pairs.len(),
        |micro| {
            let rows = micro.iter().map(|&i| join(tok, pairs[i].0, pairs[i].1, cfg.max_length as usize)).collect::<Result<Vec<_>>>()?;
            let b = pad(&rows, i64::from(tok.pad_token_id), device);
            let logits = model.logits(&b.input_ids, Some(&b.attention_mask));
            Ok((sft_loss(&logits, &b.input_ids, &b.loss_mask), 0.0))
        },
        |step, loss, _| on_step(step, loss),
    )
}
