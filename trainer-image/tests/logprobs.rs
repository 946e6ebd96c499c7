//! `rlhf-trainer logprobs` prints the same tokens and per-token log-probabilities as Hugging Face
//! transformers for a GPT-2 checkpoint with GPT-2's own tokenizer files.
mod common;

use std::process::Command;

use common::{gpt2_files, run_reference, scratch};
use serde_json::Value;

const TEXT: &str = "The quick brown fox jumps over the lazy dog.";

#[test]
fn logprobs_match_transformers() {
    let dir = scratch("logprobs");
    let config =
        r#"{"vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}"#;
    run_reference(&["make", "gpt2", dir.to_str().unwrap(), config]);
    let (vocab, merges) = gpt2_files();
    let texts = serde_json::to_string(&[TEXT]).unwrap();
    run_reference(&[
        "tokenize",
        dir.to_str().unwrap(),
        &texts,
        vocab.to_str().unwrap(),
        merges.to_str().unwrap(),
    ]);
    let model = dir.join("model");
    for entry in std::fs::read_dir(dir.join("gpt2")).unwrap().flatten() {
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let reference: Value =
        serde_json::from_str(run_reference(&["logprobs", model.to_str().unwrap(), TEXT]).trim())
            .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"))
        .args([
            "logprobs",
            "--model",
            model.to_str().unwrap(),
            "--text",
            TEXT,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(ours["tokens"], reference["tokens"]);
    let (a, b) = (
        ours["logprobs"].as_array().unwrap(),
        reference["logprobs"].as_array().unwrap(),
    );
    assert_eq!(a.len(), ours["tokens"].as_array().unwrap().len() - 1);
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    println!(
        "logprobs of {} tokens, max abs difference to transformers {diff:.2e}",
        a.len()
    );
    assert!(diff <= 1e-4, "max abs difference {diff}");

    let missing = Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"))
        .args(["logprobs", "--model", "/nonexistent", "--text", "x"])
        .output()
        .unwrap();
    assert_eq!(
        missing.status.code(),
        Some(2),
        "a missing model folder is bad input"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
