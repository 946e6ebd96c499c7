//! Tokenizers, tokenizing exactly as Hugging Face does: a folder's `tokenizer.json` (its own
//! post-processor decides about BOS/EOS), GPT-2-style `vocab.json` + `merges.txt` (byte-level BPE),
//! or GPT-2's BPE built into the binary (tiktoken's r50k_base: the same 50257 ids).
pub mod chat;
pub mod folder_files;

use std::path::{Path, PathBuf};

use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::error::{Error, Result};

const GPT2_EOS: &str = "<|endoftext|>";

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Gpt2(&'static tiktoken_rs::CoreBPE),
}

pub struct Tokenizer {
    inner: Inner,
    /// Where it came from, for error messages.
    origin: PathBuf,
    pub eos_token_id: Option<u32>,
    /// Padding id: the tokenizer's pad token, else EOS, else 0 (padding is always masked).
    pub pad_token_id: u32,
    pub vocab_size: usize,
    /// Texts come rendered by a chat template, which wrote their special tokens: encode adds
    /// none, and no EOS is appended to responses (the template ended the turn).
    rendered: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({}, vocab {})",
            self.origin.display(),
            self.vocab_size
        )
    }
}

impl Tokenizer {
    pub fn load(spec: &ResolvedTokenizer) -> Result<Self> {
        match spec {
            ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2) => Ok(Self {
                inner: Inner::Gpt2(tiktoken_rs::r50k_base_singleton()),
                origin: PathBuf::from("<builtin gpt2>"),
                eos_token_id: Some(50256),
                pad_token_id: 50256,
                vocab_size: 50257,
                rendered: false,
            }),
            ResolvedTokenizer::Path(dir) => Self::from_folder(Path::new(dir)),
        }
    }

    /// `tokenizer.json`, else `vocab.json` + `merges.txt`; special tokens from
    /// `tokenizer_config.json` when present.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let hf = if json.exists() {
            tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| Error::invalid(&json, e.to_string()))?
        } else if vocab.exists() && merges.exists() {
            byte_level_bpe(&vocab, &merges)?
        } else {
            return Err(Error::invalid(
                dir,
                "no tokenizer.json, nor vocab.json + merges.txt",
            ));
        };
        let specials = SpecialTokens::read(dir)?;
        let id = |t: &Option<String>| t.as_deref().and_then(|t| hf.token_to_id(t));
        let eos_token_id = id(&specials.eos_token).or_else(|| hf.token_to_id(GPT2_EOS));
        let pad_token_id = id(&specials.pad_token).or(eos_token_id).unwrap_or(0);
        let vocab_size = hf.get_vocab_size(true);
        Ok(Self {
            inner: Inner::Hf(Box::new(hf)),
            origin: dir.into(),
            eos_token_id,
            pad_token_id,
            vocab_size,
            rendered: false,
        })
    }

    /// The same tokenizer for texts a chat template rendered.
    pub fn rendered(self) -> Self {
        Self {
            rendered: true,
            ..self
        }
    }

    /// The id appended after a response: EOS, unless a chat template ended the turn itself.
    pub fn eos_after_response(&self) -> Option<u32> {
        self.eos_token_id.filter(|_| !self.rendered)
    }

    /// Token ids of `text`, special tokens included as the tokenizer defines them (none added to
    /// rendered chat text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => Ok(t
                .encode(text, !self.rendered)
                .map_err(|e| Error::invalid(&self.origin, e.to_string()))?
                .get_ids()
                .to_vec()),
            Inner::Gpt2(bpe) => Ok(bpe.encode_with_special_tokens(text)),
        }
    }

    /// Token ids of `text` without the post-processor's special tokens (for a response that
    /// continues a prompt: no second BOS in the middle of a sequence).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => Ok(t
                .encode(text, false)
                .map_err(|e| Error::invalid(&self.origin, e.to_string()))?
                .get_ids()
                .to_vec()),
            Inner::Gpt2(bpe) => Ok(bpe.encode_with_special_tokens(text)),
        }
    }

    /// The text of `ids`. Byte-level tokens can end inside a multi-byte character (a sampled
    /// response cut at maxNewTokens, or any sample of an untrained model): such bytes become
    /// U+FFFD rather than an error, as Hugging Face's byte-level decoder does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| Error::invalid(&self.origin, e.to_string())),
            Inner::Gpt2(bpe) => bpe
                .decode_bytes(ids)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| Error::invalid(&self.origin, e.to_string())),
        }
    }

    /// A model must have an embedding row for every id the tokenizer can produce.
    pub fn check_fits(&self, model_vocab: i64, model: &Path) -> Result<()> {
        if self.vocab_size as i64 > model_vocab {
            return Err(Error::invalid(
                model,
                format!(
                    "the tokenizer ({}) has {} ids but the model only {model_vocab}",
                    self.origin.display(),
                    self.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// GPT-2's layout: byte-level pre-tokenizer and decoder around a BPE model.
fn byte_level_bpe(vocab: &Path, merges: &Path) -> Result<tokenizers::Tokenizer> {
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| Error::invalid(vocab, e.to_string()))?;
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    // Like HF's GPT2Tokenizer: "<|endoftext|>" in text is the special token, not 7 pieces.
    if t.token_to_id(GPT2_EOS).is_some() {
        t.add_special_tokens(&[tokenizers::AddedToken::from(GPT2_EOS, true)]);
    }
    Ok(t)
}

/// The special tokens named in `tokenizer_config.json` (strings or `{"content": ...}`).
#[derive(Default)]
struct SpecialTokens {
    eos_token: Option<String>,
    pad_token: Option<String>,
}

impl SpecialTokens {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self::default());
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::parse(&path, &e))?;
        let token = |key: &str| match &v[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        Ok(Self {
            eos_token: token("eos_token"),
            pad_token: token("pad_token"),
        })
    }
}
