//! Tokenization equals Hugging Face's: GPT-2's BPE (built in, and from vocab.json + merges.txt,
//! and from a saved tokenizer.json) against transformers' GPT2TokenizerFast on the same files,
//! and a tokenizer.json whose post-processor adds BOS.
mod common;

use std::path::Path;

use common::{gpt2_files, run_reference, scratch};
use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};
use rlhf_trainer::tokenizer::Tokenizer;

const TEXTS: &[&str] = &[
    "Hello world",
    " leading space and trailing ",
    "numbers 12345, symbols !? and 'quotes'",
    "unicode: café 日本語 🚀",
    "one doc<|endoftext|>another doc",
    "  multiple   spaces\n\nand newlines",
];

fn encode_all(t: &Tokenizer) -> Vec<Vec<u32>> {
    TEXTS.iter().map(|s| t.encode(s).unwrap()).collect()
}

#[test]
fn tokenizers_match_transformers() {
    let dir = scratch("tokenizers");
    let (vocab, merges) = gpt2_files();
    let texts = serde_json::to_string(TEXTS).unwrap();
    run_reference(&[
        "tokenize",
        dir.to_str().unwrap(),
        &texts,
        vocab.to_str().unwrap(),
        merges.to_str().unwrap(),
    ]);
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).unwrap()).unwrap();
    let expected =
        |key: &str| -> Vec<Vec<u32>> { serde_json::from_value(ids[key].clone()).unwrap() };

    let builtin = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
    assert_eq!(encode_all(&builtin), expected("gpt2"), "builtin gpt2");
    assert_eq!(builtin.eos_token_id, Some(50256));

    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::copy(&vocab, files.join("vocab.json")).unwrap();
    std::fs::copy(&merges, files.join("merges.txt")).unwrap();
    let from_files = Tokenizer::from_folder(&files).unwrap();
    assert_eq!(
        encode_all(&from_files),
        expected("gpt2"),
        "vocab.json + merges.txt"
    );

    let saved = Tokenizer::from_folder(&dir.join("gpt2")).unwrap();
    assert_eq!(
        encode_all(&saved),
        expected("gpt2"),
        "tokenizer.json saved by transformers"
    );
    assert_eq!((saved.eos_token_id, saved.vocab_size), (Some(50256), 50257));

    let with_bos = Tokenizer::from_folder(&dir.join("bos")).unwrap();
    assert_eq!(
        encode_all(&with_bos),
        expected("bos"),
        "post-processor adding BOS"
    );
    assert_eq!(
        with_bos.eos_token_id,
        with_bos.encode("</s>").unwrap().last().copied()
    );

    for t in [&builtin, &from_files] {
        assert_eq!(
            t.decode(&t.encode(TEXTS[3]).unwrap()).unwrap(),
            TEXTS[3],
            "decode inverts encode"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_larger_than_the_model_is_refused() {
    let builtin = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
    let err = builtin
        .check_fits(1000, Path::new("/models/tiny"))
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        "/models/tiny: the tokenizer (<builtin gpt2>) has 50257 ids but the model only 1000"
    );
    let empty = scratch("no-tokenizer");
    let err = Tokenizer::from_folder(&empty).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("no tokenizer.json, nor vocab.json + merges.txt"),
        "{err}"
    );
}
