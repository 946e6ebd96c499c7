//! `rlhf-trainer logprobs`: how a saved model scores a text, token by token (debugging, parity
//! checks against other implementations).
use std::path::Path;

use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::algorithms::losses::token_logprobs;
use crate::error::{Error, Result};
use crate::models::load_causal_lm;
use crate::tokenizer::Tokenizer;

/// Where `--tokenizer` points: `gpt2` is the builtin GPT-2 tokenizer, anything else a folder;
/// None means the model's folder.
pub fn tokenizer_source(model: &Path, tokenizer: Option<&str>) -> ResolvedTokenizer {
    match tokenizer {
        Some("gpt2") => ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2),
        Some(dir) => ResolvedTokenizer::Path(dir.into()),
        None => ResolvedTokenizer::Path(model.to_string_lossy().into_owned()),
    }
}

/// `{"tokens": [ids], "logprobs": [...]}`: `logprobs[i]` is log p(tokens[i + 1] | tokens[..=i])
/// under the model in `dir`.
pub fn logprobs(
    dir: &Path,
    tokenizer: &ResolvedTokenizer,
    text: &str,
    device: Device,
) -> Result<Value> {
    let tok = Tokenizer::load(tokenizer)?;
    let (_vs, lm) = load_causal_lm(dir, device)?;
    tok.check_fits(
        lm.hf_config()["vocab_size"].as_i64().unwrap_or(i64::MAX),
        dir,
    )?;
    let ids: Vec<i64> = tok.encode(text)?.into_iter().map(i64::from).collect();
    if ids.is_empty() {
        return Err(Error::invalid("--text", "the text has no tokens"));
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(device);
    let scores = tch::no_grad(|| {
        let logits = lm.logits(&input, None);
        let n = ids.len() as i64 - 1;
        token_logprobs(&logits.narrow(1, 0, n), &input.narrow(1, 1, n))
            .to_kind(Kind::Double)
            .to_device(Device::Cpu)
    });
    let logprobs = Vec::<f64>::try_from(scores.flatten(0, -1))?;
    Ok(json!({"tokens": ids, "logprobs": logprobs}))
}
