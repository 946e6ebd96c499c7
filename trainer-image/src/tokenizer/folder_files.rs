//! What a saved model folder carries besides its weights, so that transformers' `AutoTokenizer`
//! and `AutoModelForCausalLM` (and inference servers) load it with nothing else: the tokenizer's
//! files, copied from the tokenizer folder or, for the builtin GPT-2 BPE, written out of it as
//! `vocab.json` + `merges.txt`; and `generation_config.json`, the base folder's or one naming
//! the tokenizer's EOS.
use std::collections::HashMap;
use std::path::Path;

use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};

use super::{GPT2_EOS, Tokenizer};
use crate::error::{Error, Result};

/// The files of a Hugging Face tokenizer folder (any that exist are copied).
pub const TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

pub const GENERATION_CONFIG: &str = "generation_config.json";

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.into(),
        source,
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|source| Error::Write {
            path: to.into(),
            source,
        })
}

/// Writes the tokenizer of `spec` (loaded as `tok`) and a generation config into the saved
/// model folder `dir`; `base` is the base model's folder, whose generation_config.json is
/// kept when it has one.
pub fn write_into(
    dir: &Path,
    spec: &ResolvedTokenizer,
    tok: &Tokenizer,
    base: Option<&Path>,
) -> Result<()> {
    match spec {
        ResolvedTokenizer::Path(folder) => {
            for name in TOKENIZER_FILES {
                let from = Path::new(folder).join(name);
                if from.is_file() {
                    copy(&from, &dir.join(name))?;
                }
            }
        }
        ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2) => write_gpt2(dir)?,
    }
    let base_config = base.map(|b| b.join(GENERATION_CONFIG));
    match base_config.filter(|p| p.is_file()) {
        Some(from) => copy(&from, &dir.join(GENERATION_CONFIG)),
        None => {
            let mut config = serde_json::json!({"pad_token_id": tok.pad_token_id});
            if let Some(eos) = tok.eos_token_id {
                config["eos_token_id"] = eos.into();
                config["bos_token_id"] = eos.into();
            }
            write(&dir.join(GENERATION_CONFIG), &pretty(&config))
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value serializes")
}

/// GPT-2's folder files from the builtin BPE: `vocab.json`, `merges.txt` and a
/// `tokenizer_config.json` naming `<|endoftext|>` as BOS, EOS and unknown token, as the
/// original `gpt2` folder does.
fn write_gpt2(dir: &Path) -> Result<()> {
    let ByteLevelFiles { vocab, merges } = gpt2_vocab_and_merges();
    let vocab: serde_json::Map<String, serde_json::Value> =
        vocab.into_iter().map(|(t, id)| (t, id.into())).collect();
    write(
        &dir.join("vocab.json"),
        &serde_json::Value::Object(vocab).to_string(),
    )?;
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    write(&dir.join("merges.txt"), &text)?;
    let config = serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": GPT2_EOS, "eos_token": GPT2_EOS, "unk_token": GPT2_EOS,
        "add_prefix_space": false, "model_max_length": 1024,
    });
    write(&dir.join("tokenizer_config.json"), &pretty(&config))
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others for
/// characters from U+0100 on, so every byte string is a printable string.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

/// A byte-level BPE as GPT-2's folder files hold it.
pub struct ByteLevelFiles {
    /// Token string (bytes through GPT-2's byte-to-character table) and id.
    pub vocab: Vec<(String, u32)>,
    /// The merges in rank order.
    pub merges: Vec<(String, String)>,
}

/// The vocabulary and merges of the builtin BPE. Each id of r50k_base is a byte string; a
/// multi-byte token of rank r is the merge of the two parts that byte-pair merging with the
/// ranks below r leaves.
pub fn gpt2_vocab_and_merges() -> ByteLevelFiles {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let chars = byte_chars();
    let show = |bytes: &[u8]| -> String { bytes.iter().map(|b| chars[*b as usize]).collect() };
    let tokens: Vec<Vec<u8>> = (0..50256u32)
        .map(|id| {
            bpe.decode_bytes(&[id])
                .expect("every id below 50256 decodes")
        })
        .collect();
    let ranks: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_slice(), id as u32))
        .collect();
    let mut vocab: Vec<(String, u32)> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (show(t), id as u32))
        .collect();
    vocab.push((GPT2_EOS.into(), 50256));
    let merges = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| t.len() > 1)
        .map(|(rank, t)| {
            let (a, b) = last_merge(t, &ranks, rank as u32);
            (show(a), show(b))
        })
        .collect();
    ByteLevelFiles { vocab, merges }
}

/// Byte-pair merges `token` using only ranks below `rank`, lowest rank first; the two parts
/// left are the merge that made `token`.
fn last_merge<'a>(token: &'a [u8], ranks: &HashMap<&[u8], u32>, rank: u32) -> (&'a [u8], &'a [u8]) {
    // Part boundaries: part i is token[bounds[i]..bounds[i + 1]].
    let mut bounds: Vec<usize> = (0..=token.len()).collect();
    loop {
        let best = (0..bounds.len() - 2)
            .filter_map(|i| {
                let r = *ranks.get(&token[bounds[i]..bounds[i + 2]])?;
                (r < rank).then_some((r, i))
            })
            .min();
        match best {
            Some((_, i)) => {
                bounds.remove(i + 1);
            }
            None => break,
        }
    }
    assert_eq!(
        bounds.len(),
        3,
        "r50k_base token of rank {rank} is not one merge"
    );
    (&token[..bounds[1]], &token[bounds[1]..])
}
