//! Generation with the KV cache: the cache gives the same logits as full forward passes, greedy
//! decoding matches transformers' generate() on left-padded batches, sampling is reproducible
//! from its seed, and rows stop independently at EOS.
mod common;

use common::{read_tensor, reference_batch, run_reference, scratch};
use rlhf_trainer::generation::{SamplingParams, generate};
use rlhf_trainer::models::{CausalLm, KvCache, load_causal_lm};
use tch::{Device, Kind, Tensor};

const GPT2: &str =
    r#"{"vocab_size": 101, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}"#;
const LLAMA: &str = r#"{"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}"#;

fn greedy(n: i64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: n,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        eos_token_id: None,
        pad_token_id: 0,
        row_seeds: Vec::new(),
    }
}

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

/// Feeding the batch in pieces through the cache gives the full pass's logits.
fn cache_matches_full_forward(model: &dyn CausalLm, ids: &Tensor, mask: &Tensor) {
    tch::no_grad(|| {
        let full = model.logits(ids, Some(mask));
        let mut cache = KvCache::default();
        let t = ids.size()[1];
        let mut pieces = vec![model.lm_head(&model.forward(
            &ids.narrow(1, 0, 5),
            &mask.narrow(1, 0, 5),
            &mut cache,
        ))];
        for i in 5..t {
            let hidden = model.forward(&ids.narrow(1, i, 1), &mask.narrow(1, 0, i + 1), &mut cache);
            pieces.push(model.lm_head(&hidden));
        }
        let incremental = Tensor::cat(&pieces, 1);
        let keep = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(&full);
        let diff = (full - incremental)
            .abs()
            .masked_select(&keep)
            .max()
            .double_value(&[]);
        assert!(
            diff < 1e-5,
            "cached logits differ from the full pass by {diff}"
        );
        assert_eq!(cache.len(), t);
    });
}

fn greedy_matches_transformers(family: &str, config: &str) {
    let (dir, model, ids, mask) = model(family, config, "greedy");
    cache_matches_full_forward(model.as_ref(), &ids, &mask);
    let out = dir.join("generated.safetensors");
    run_reference(&[
        "generate",
        dir.join("model").to_str().unwrap(),
        dir.join("reference.safetensors").to_str().unwrap(),
        "8",
        out.to_str().unwrap(),
    ]);
    let expected = read_tensor(&out, "sequences");
    let ours = generate(model.as_ref(), &ids, &mask, &greedy(8));
    assert_eq!(
        ours.sequences, expected,
        "{family}: greedy tokens differ from transformers' generate()"
    );
    assert_eq!(
        ours.response_mask,
        Tensor::ones([2, 8], (Kind::Int64, Device::Cpu))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_greedy_matches_transformers() {
    greedy_matches_transformers("gpt2", GPT2);
}

#[test]
fn llama_greedy_matches_transformers() {
    greedy_matches_transformers("llama", LLAMA);
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
