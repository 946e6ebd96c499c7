//! Parity with Hugging Face transformers: tiny random checkpoints made by transformers give the
//! same logits here (max abs diff <= 1e-4, fp32), and a model saved here loads in transformers
//! with the same logits. Needs the torch virtual environment (`make test` provides it through
//! RLHF_TORCH_PYTHON).
mod common;

use common::{reference_batch, run_reference, scratch};

use rlhf_trainer::models::gpt2::Gpt2;
use rlhf_trainer::models::load_causal_lm;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Max |ours - reference| over the positions that are not padding.
fn max_diff(ours: &Tensor, reference: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(ours);
    (ours - reference)
        .abs()
        .masked_select(&keep)
        .max()
        .double_value(&[])
}

/// transformers makes a random `family` model; we load it (the family comes from config.json),
/// compare logits, save it, and transformers loads our copy and compares again.
fn round_trip(family: &str, name: &str, config: &str) {
    let dir = scratch(name);
    run_reference(&["make", family, dir.to_str().unwrap(), config]);
    let (ids, mask, expected) = reference_batch(&dir);
    let (vs, model) = load_causal_lm(&dir.join("model"), Device::Cpu)
        .expect("loading the transformers checkpoint");
    let ours = tch::no_grad(|| model.logits(&ids, Some(&mask)));
    let diff = max_diff(&ours, &expected, &mask);
    println!("{name}: max abs diff vs transformers {diff:.3e}");
    assert!(
        diff <= TOLERANCE,
        "{name}: logits differ from transformers by {diff}"
    );

    model.save(&vs, &dir.join("saved")).expect("saving");
    let reference = dir.join("reference.safetensors");
    let said = run_reference(&[
        "check",
        dir.join("saved").to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    println!(
        "{name}: saved here, loaded by transformers: {}",
        said.trim()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_matches_transformers_small() {
    round_trip(
        "gpt2",
        "gpt2-small",
        r#"{"vocab_size": 101, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}"#,
    );
}

#[test]
fn gpt2_matches_transformers_other_shape() {
    round_trip(
        "gpt2",
        "gpt2-wide",
        r#"{"vocab_size": 257, "n_positions": 64, "n_embd": 48, "n_layer": 3, "n_head": 3, "n_inner": 80, "layer_norm_epsilon": 1e-6}"#,
    );
}

#[test]
fn a_folder_without_weights_is_a_clear_error() {
    let dir = scratch("empty");
    std::fs::write(
        dir.join("config.json"),
        r#"{"n_embd": 32, "n_head": 4, "n_layer": 1}"#,
    )
    .unwrap();
    let err = Gpt2::load(&dir, Device::Cpu).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .contains("no model.safetensors or model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    round_trip(
        "llama",
        "llama-gqa",
        r#"{"vocab_size": 211, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 64, "rope_theta": 500000.0}"#,
    );
}

#[test]
fn llama_tied_multi_head_matches_transformers() {
    round_trip(
        "llama",
        "llama-tied",
        r#"{"vocab_size": 150, "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 32, "tie_word_embeddings": true, "rms_norm_eps": 1e-5}"#,
    );
}

#[test]
fn an_unknown_model_type_is_a_clear_error() {
    let dir = scratch("bert");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let err = load_causal_lm(&dir, Device::Cpu).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .ends_with("config.json: model_type Some(\"bert\") is not supported (gpt2, llama)"),
        "{err}"
    );
}
