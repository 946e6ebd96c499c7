//! `rlhf-trainer logprobs`: how a saved model scores a text, token by token (debugging, parity
//! checks against other implementations).
use std::path::Path;

use rlhf_spec::ResolvedTokenizer;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::algorithms::losses::token_logprobs;
use crate::error::{Error, Result};
use crate::models::load_causal_lm;
use crate::tokenizer::Tokenizer;

/// `{"tokens": [ids], "logprobs": [...]}`: `logprobs[i]` is log p(tokens[i + 1] | tokens[..=i])
/// under the model in `dir`, tokenized by the tokenizer in the same folder.
pub fn logprobs(dir: &Path, text: &str, device: Device) -> Result<Value> {
    let tok = Tokenizer::load(&ResolvedTokenizer::Path(dir.to_string_lossy().into_owned()))?;
    let (_vs, lm) = load_causal_lm(dir, device)?;
    tok.check_fits(lm.hf_config()["vocab_size"].as_i64().unwrap_or(i64::MAX), dir)?;
    let ids: Vec<i64> = tok.encode(text)?.into_iter().map(i64::from).collect();
    if ids.is_empty() {
        return Err(Error::invalid("--text", "the text has no tokens"));
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(device);
    let scores = tch::no_grad(|| {
        let logits = lm.logits(&input, None);
        let n = ids.len() as i64 - 1;
        token_logprobs(&logits.narrow(1, 0, n), &input.narrow(1, 1, n)).to_kind(Kind::Double).to_device(Device::Cpu)
    });
    let logprobs = Vec::<f64>::try_from(scores.flatten(0, -1))?;
    Ok(json!({"tokens": ids, "logprobs": logprobs}))
}
