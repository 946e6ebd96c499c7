//! The folders stages save are complete Hugging Face folders: a chat SFT run (message lists
//! rendered by the folder's ChatML-style template) on a Qwen2 folder in bf16 (no
//! `model.family`: config.json says it) saves weights in bf16 with the tokenizer files, the chat
//! template and generation_config.json, and transformers' AutoTokenizer + AutoModelForCausalLM
//! load it alone and give our log-probabilities; the builtin GPT-2 BPE is
//! written out as GPT-2's own vocab.json and merges.txt; a family that disagrees with the folder
//! is a permanent error.
mod common;

use std::path::Path;
use std::process::Command;

use common::{CHATML_STYLE, gpt2_files, run_local, run_reference, scratch};
use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};
use rlhf_trainer::tokenizer::Tokenizer;
use rlhf_trainer::tokenizer::folder_files::{gpt2_vocab_and_merges, write_into};
use serde_json::Value;
use tch::{Kind, Tensor};

const TEXT: &str = "copy: red blue green => red blue green";

fn manifest(base: &Path, family: &str) -> String {
    format!(
        "apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {{name: qwen-sft}}\nspec:\n  image: unused\n  model: {{path: {base}{family}}}\n  \
         stages:\n    - name: sft\n      kind: sft\n      dataset: {{path: data.jsonl}}\n      \
         training: {{batchSize: 4, microBatchSize: 2, maxSteps: 2, maxLength: 32, learningRate: 0.001}}\n",
        base = base.display(),
    )
}

fn logprobs_here(model: &Path) -> Value {
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
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_sft_run_on_a_qwen_folder_saves_what_transformers_loads_alone() {
    let dir = scratch("saved-folders");
    let base = dir.join("qwen");
    let template = dir.join("chatml.jinja");
    std::fs::write(&template, CHATML_STYLE).unwrap();
    run_reference(&[
        "hub_folder",
        base.to_str().unwrap(),
        "qwen2",
        r#"{"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true}"#,
        "bfloat16",
        template.to_str().unwrap(),
    ]);
    let rows: String = (0..16)
        .map(|i| {
            let conversation = serde_json::json!([
                {"role": "user", "content": format!("copy: red blue {i}")},
                {"role": "assistant", "content": format!("red blue {i}")},
            ]);
            format!("{}\n", serde_json::json!({"messages": conversation}))
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), rows).unwrap();
    let (run, _) = run_local(&dir, "run", &manifest(&base, ""));
    let saved = run.join("sft/model");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        assert!(saved.join(file).is_file(), "the saved folder has no {file}");
    }
    for (name, t) in Tensor::read_safetensors(saved.join("model.safetensors")).unwrap() {
        assert_eq!(
            t.kind(),
            Kind::BFloat16,
            "{name} is saved in the input's dtype"
        );
    }
    let reference: Value =
        serde_json::from_str(run_reference(&["logprobs", saved.to_str().unwrap(), TEXT]).trim())
            .unwrap();
    let ours = logprobs_here(&saved);
    assert_eq!(ours["tokens"], reference["tokens"], "AutoTokenizer's ids");
    let diff = ours["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["logprobs"].as_array().unwrap())
        .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    println!("saved qwen2 folder: logprobs within {diff:.2e} of transformers");
    assert!(diff <= 1e-4, "logprobs differ from transformers by {diff}");

    // Naming another family than the folder's is bad input, naming both.
    let path = dir.join("wrong.yaml");
    std::fs::write(&path, manifest(&base, ", family: llama")).unwrap();
    let out = common::local(&path, "--output", &dir.join("wrong"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "config.json: model_type \"qwen2\" disagrees with the job's model.family \"llama\""
        ),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_builtin_gpt2_bpe_is_written_as_gpt2s_own_files() {
    let files = gpt2_vocab_and_merges();
    let (vocab, merges) = (files.vocab, files.merges);
    let (encoder, bpe) = gpt2_files();
    let original: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(encoder).unwrap()).unwrap();
    assert_eq!(vocab.len(), original.len());
    for (token, id) in &vocab {
        assert_eq!(
            original.get(token).and_then(Value::as_u64),
            Some(u64::from(*id)),
            "{token:?}"
        );
    }
    let text = std::fs::read_to_string(bpe).unwrap();
    let original: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let ours: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    assert_eq!(ours.len(), original.len());
    for (i, (a, b)) in ours.iter().zip(&original).enumerate() {
        assert_eq!(a, b, "merge {i}");
    }

    // A GPT-2 folder completed with them tokenizes in transformers as here.
    let dir = scratch("builtin-gpt2");
    let config =
        r#"{"vocab_size": 50257, "n_positions": 64, "n_embd": 32, "n_layer": 1, "n_head": 4}"#;
    run_reference(&["make", "gpt2", dir.to_str().unwrap(), config]);
    let model = dir.join("model");
    let builtin = ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2);
    let tok = Tokenizer::load(&builtin).unwrap();
    write_into(&model, &builtin, &tok, None).unwrap();
    let reference: Value =
        serde_json::from_str(run_reference(&["logprobs", model.to_str().unwrap(), TEXT]).trim())
            .unwrap();
    let ids: Vec<Value> = tok
        .encode(TEXT)
        .unwrap()
        .into_iter()
        .map(Value::from)
        .collect();
    assert_eq!(reference["tokens"], Value::Array(ids));
    let generation: Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("generation_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(generation["eos_token_id"], 50256);
    let _ = std::fs::remove_dir_all(&dir);
}
