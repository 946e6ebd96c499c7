//! Scalar heads: a reward model saved here is a one-label *ForSequenceClassification that
//! transformers scores identically, and the score is read at the last real token whichever
//! side the padding is on.
mod common;

use common::{read_tensor, reference_batch, run_reference, scratch};
use rlhf_trainer::models::heads::ScalarHead;
use tch::{Device, Kind, Tensor};

fn reward_model_round_trip(family: &str, config: &str) {
    let dir = scratch(&format!("heads-{family}"));
    run_reference(&["make", family, dir.to_str().unwrap(), config]);
    let (vs, rm) = ScalarHead::load(&dir.join("model"), Device::Cpu).unwrap();
    let saved = dir.join("rm");
    rm.save(&vs, &saved, 0, Kind::Float).unwrap();
    let (vs2, reloaded) = ScalarHead::load(&saved, Device::Cpu).unwrap();
    assert_eq!(vs2.variables().len(), vs.variables().len());

    let (ids, _, _) = reference_batch(&dir);
    let ones = ids.ones_like();
    let ours = tch::no_grad(|| reloaded.last_token(&ids, &ones));
    let out = dir.join("scores.safetensors");
    run_reference(&[
        "score",
        saved.to_str().unwrap(),
        dir.join("reference.safetensors").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let expected = read_tensor(&out, "scores");
    let diff = (ours - expected).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4,
        "{family}: scores differ from transformers by {diff}"
    );

    // The same sequence scores the same left-padded, right-padded or alone.
    tch::no_grad(|| {
        let row = ids.get(0).narrow(0, 0, 6);
        let pad = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
        let (one, zero) = (
            Tensor::ones([6], (Kind::Int64, Device::Cpu)),
            pad.zeros_like(),
        );
        let alone = reloaded.last_token(&row.unsqueeze(0), &one.unsqueeze(0));
        let left = reloaded.last_token(
            &Tensor::cat(&[&pad, &row], 0).unsqueeze(0),
            &Tensor::cat(&[&zero, &one], 0).unsqueeze(0),
        );
        let right = reloaded.last_token(
            &Tensor::cat(&[&row, &pad], 0).unsqueeze(0),
            &Tensor::cat(&[&one, &zero], 0).unsqueeze(0),
        );
        for (side, s) in [("left", left), ("right", right)] {
            let d = (s - &alone).abs().double_value(&[0]);
            assert!(
                d < 1e-5,
                "{family}: {side} padding changes the score by {d}"
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_reward_model_matches_transformers() {
    reward_model_round_trip(
        "gpt2",
        r#"{"vocab_size": 101, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}"#,
    );
}

#[test]
fn llama_reward_model_matches_transformers() {
    reward_model_round_trip(
        "llama",
        r#"{"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}"#,
    );
}
