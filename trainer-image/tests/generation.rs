//! Sampling is reproducible from its seed, and rows stop independently at EOS. (The KV cache and
//! greedy decoding are checked against transformers for every family in hf_parity.rs.)
mod common;

use common::{greedy, reference_batch, run_reference, scratch};
use rlhf_trainer::generation::{SamplingParams, generate};
use rlhf_trainer::models::{CausalLm, load_causal_lm};
use tch::{Device, Tensor};

const GPT2: &str =
    r#"{"vocab_size": 101, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}"#;

/// A transformers-made random model of `family` plus its reference batch.
fn model(
    family: &str,
    config: &str,
    test: &str,
) -> (std::path::PathBuf, Box<dyn CausalLm>, Tensor, Tensor) {
    let dir = scratch(&format!("gen-{family}-{test}")); // tests run in parallel: one folder each
    run_reference(&["make", family, dir.to_str().unwrap(), config]);
    let (_vs, model) = load_causal_lm(&dir.join("model"), Device::Cpu).unwrap();
    let (ids, mask, _) = reference_batch(&dir);
    (dir, model, ids, mask)
}

#[test]
fn sampling_is_reproducible_and_rows_stop_at_eos() {
    let (dir, model, ids, mask) = model("gpt2", GPT2, "sampling");
    let sample = |seed: u64| SamplingParams {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.9,
        row_seeds: vec![seed, seed + 100],
        ..greedy(12)
    };
    let a = generate(model.as_ref(), &ids, &mask, &sample(1));
    let b = generate(model.as_ref(), &ids, &mask, &sample(1));
    let c = generate(model.as_ref(), &ids, &mask, &sample(2));
    assert_eq!(a.sequences, b.sequences, "same seed, same tokens");
    assert_ne!(a.sequences, c.sequences, "another seed, other tokens");

    // Make row 0's third greedy token the EOS: row 0 stops there, row 1 goes on.
    let free = generate(model.as_ref(), &ids, &mask, &greedy(6));
    let prompt_len = ids.size()[1];
    let eos = free.sequences.int64_value(&[0, prompt_len + 2]);
    let stopped = generate(
        model.as_ref(),
        &ids,
        &mask,
        &SamplingParams {
            eos_token_id: Some(eos),
            pad_token_id: 0,
            ..greedy(6)
        },
    );
    let row0: Vec<i64> = Vec::try_from(stopped.response_mask.get(0)).unwrap();
    let first_eos = (0..6)
        .find(|&i| stopped.sequences.int64_value(&[0, prompt_len + i]) == eos)
        .unwrap();
    let expected: Vec<i64> = (0..6).map(|i| i64::from(i <= first_eos)).collect();
    assert_eq!(
        row0, expected,
        "row 0 keeps tokens up to and including its first EOS"
    );
    let padded: Vec<i64> = (first_eos + 1..6)
        .map(|i| stopped.sequences.int64_value(&[0, prompt_len + i]))
        .collect();
    assert!(
        padded.iter().all(|&t| t == 0),
        "after EOS row 0 is padding: {padded:?}"
    );
    assert_eq!(stopped.attention_mask.size(), [2, prompt_len + 6]);
    let _ = std::fs::remove_dir_all(&dir);
}
