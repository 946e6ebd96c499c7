//! Parity with Hugging Face transformers, for every family: tiny random checkpoints made by
//! transformers from configurations that exercise each option give the same logits here (max abs
//! diff <= 1e-4, fp32), the KV cache gives the full pass's logits, greedy decoding of a
//! left-padded batch equals transformers' generate(), and a folder saved after one training step
//! loads in transformers with our logits. Needs the torch virtual environment (`make test`
//! provides it through RLHF_TORCH_PYTHON).
mod common;

use common::{greedy, read_tensor, reference_batch, run_reference, scratch};

use rlhf_trainer::generation::generate;
use rlhf_trainer::models::gpt2::Gpt2;
use rlhf_trainer::models::{CausalLm, KvCache, load_causal_lm};
use tch::{Device, Kind, Tensor, nn};

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

/// Feeding the batch in pieces through the cache gives the full pass's logits.
fn cache_matches_full_forward(name: &str, model: &dyn CausalLm, ids: &Tensor, mask: &Tensor) {
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
        let diff = max_diff(&full, &Tensor::cat(&pieces, 1), mask);
        assert!(
            diff < 1e-5,
            "{name}: cached logits differ from the full pass by {diff}"
        );
        assert_eq!(cache.len(), t);
    });
}

/// Greedy decoding of 8 tokens (no EOS) equals transformers' generate().
fn greedy_matches_generate(name: &str, dir: &std::path::Path, model: &dyn CausalLm) {
    let (ids, mask, _) = reference_batch(dir);
    let out = dir.join("generated.safetensors");
    run_reference(&[
        "generate",
        dir.join("model").to_str().unwrap(),
        dir.join("reference.safetensors").to_str().unwrap(),
        "8",
        out.to_str().unwrap(),
    ]);
    let ours = generate(model, &ids, &mask, &greedy(8));
    assert_eq!(
        ours.sequences,
        read_tensor(&out, "sequences"),
        "{name}: greedy tokens differ from transformers' generate()"
    );
}

/// One sign-gradient step on the next-token loss of the reference batch: every weight moves.
fn train_one_step(vs: &nn::VarStore, model: &dyn CausalLm, ids: &Tensor, mask: &Tensor) {
    let t = ids.size()[1];
    let loss = model
        .logits(ids, Some(mask))
        .narrow(1, 0, t - 1)
        .log_softmax(-1, Kind::Float)
        .gather(2, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false)
        .mean(Kind::Float)
        .neg();
    loss.backward();
    tch::no_grad(|| {
        for (_, var) in vs.variables() {
            let grad = var.grad();
            if grad.defined() {
                let _ = var.shallow_clone().f_sub_(&(grad.sign() * 1e-2));
            }
        }
    });
}

/// transformers makes a random `family` model; we load it (the family comes from config.json),
/// compare logits, the cache and greedy decoding, train one step, save, and transformers loads
/// our folder and must give our logits.
fn parity(family: &str, name: &str, config: &str) {
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
    cache_matches_full_forward(name, model.as_ref(), &ids, &mask);
    greedy_matches_generate(name, &dir, model.as_ref());

    train_one_step(&vs, model.as_ref(), &ids, &mask);
    let trained = tch::no_grad(|| model.logits(&ids, Some(&mask)));
    assert!(
        max_diff(&trained, &ours, &mask) > 1e-3,
        "{name}: the training step changed nothing"
    );
    model
        .save(&vs, &dir.join("saved"), Kind::Float)
        .expect("saving");
    let reference = dir.join("trained.safetensors");
    Tensor::write_safetensors(
        &[
            ("input_ids", ids),
            ("attention_mask", mask),
            ("logits", trained),
        ],
        &reference,
    )
    .unwrap();
    let said = run_reference(&[
        "check",
        dir.join("saved").to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    println!(
        "{name}: trained and saved here, loaded by transformers: {}",
        said.trim()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpt2_matches_transformers() {
    parity(
        "gpt2",
        "gpt2-small",
        r#"{"vocab_size": 101, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}"#,
    );
    parity(
        "gpt2",
        "gpt2-wide",
        r#"{"vocab_size": 257, "n_positions": 64, "n_embd": 48, "n_layer": 3, "n_head": 3, "n_inner": 80, "layer_norm_epsilon": 1e-6}"#,
    );
}

#[test]
fn llama_matches_transformers() {
    // Grouped-query attention, untied head, Llama 3's rope_theta.
    parity(
        "llama",
        "llama-gqa",
        r#"{"vocab_size": 211, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 64, "rope_theta": 500000.0}"#,
    );
    // Tied embeddings as in Llama 3.2 1B/3B, with Llama 3.1's rope scaling: head_dim 16 has
    // wavelengths below 64/4 (kept), between (blended) and above 64 (divided by the factor).
    parity(
        "llama",
        "llama3-tied-scaled",
        r#"{"vocab_size": 150, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64}}"#,
    );
    // Linear rope scaling, biases everywhere.
    parity(
        "llama",
        "llama-linear-bias",
        r#"{"vocab_size": 120, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "attention_bias": true, "mlp_bias": true,
            "rope_scaling": {"type": "linear", "factor": 2.0}}"#,
    );
}

#[test]
fn mistral_matches_transformers() {
    // A sliding window of 4, shorter than the 9-token batch; a head width of its own.
    parity(
        "mistral",
        "mistral-window",
        r#"{"vocab_size": 130, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 64,
            "sliding_window": 4}"#,
    );
}

#[test]
fn qwen2_matches_transformers() {
    // Biases on q, k, v; the window on blocks from max_window_layers on; untied.
    parity(
        "qwen2",
        "qwen2-window",
        r#"{"vocab_size": 140, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "use_sliding_window": true, "sliding_window": 3, "max_window_layers": 1, "tie_word_embeddings": false}"#,
    );
    // Qwen2.5's small models tie their embeddings.
    parity(
        "qwen2",
        "qwen2-tied",
        r#"{"vocab_size": 140, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 1, "max_position_embeddings": 64, "tie_word_embeddings": true,
            "rope_theta": 1000000.0}"#,
    );
}

#[test]
fn qwen3_matches_transformers() {
    // Per-head q/k norms, a head width unlike hidden / heads, biases, GQA.
    parity(
        "qwen3",
        "qwen3",
        r#"{"vocab_size": 150, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 64,
            "attention_bias": true, "tie_word_embeddings": false}"#,
    );
}

#[test]
fn gemma2_matches_transformers() {
    // Soft-capped scores and logits (caps small enough to bite), sliding blocks of 4 between
    // global ones, GeGLU, (1 + w) norms, scaled embeddings, tied head.
    parity(
        "gemma2",
        "gemma2",
        r#"{"vocab_size": 160, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
            "query_pre_attn_scalar": 24, "sliding_window": 4, "attn_logit_softcapping": 0.5,
            "final_logit_softcapping": 0.8}"#,
    );
}

#[test]
fn gemma3_text_matches_transformers() {
    // q/k norms, local blocks with their own rotary base, global ones with linear scaling,
    // a window of 3, an untied head.
    parity(
        "gemma3_text",
        "gemma3",
        r#"{"vocab_size": 170, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 64,
            "query_pre_attn_scalar": 16, "sliding_window": 3, "rope_theta": 100000.0, "rope_local_base_freq": 1000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0}, "tie_word_embeddings": false,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}"#,
    );
}

#[test]
fn opt_matches_transformers() {
    // Pre-LN blocks and a final norm (OPT-125m and most sizes), biases, and a token embedding
    // narrower than the blocks: projected in, and out after the final norm, into the tied head.
    parity(
        "opt",
        "opt-pre-ln-projected",
        r#"{"vocab_size": 110, "hidden_size": 64, "word_embed_proj_dim": 16, "ffn_dim": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 24}"#,
    );
    // Post-LN blocks and no final norm (OPT-350m), no biases, an untied head.
    parity(
        "opt",
        "opt-post-ln",
        r#"{"vocab_size": 130, "hidden_size": 48, "ffn_dim": 80, "num_hidden_layers": 3,
            "num_attention_heads": 3, "max_position_embeddings": 32, "do_layer_norm_before": false,
            "enable_bias": false, "tie_word_embeddings": false}"#,
    );
}

#[test]
fn bloom_matches_transformers() {
    // 6 heads: the slopes of 4 heads, then two of the 8-head series (ALiBi's other branch).
    parity(
        "bloom",
        "bloom-6-heads",
        r#"{"vocab_size": 140, "hidden_size": 48, "n_layer": 2, "n_head": 6}"#,
    );
    // Residuals from the normed inputs, 5 heads, an untied head, another epsilon.
    parity(
        "bloom",
        "bloom-residual-post-ln",
        r#"{"vocab_size": 120, "hidden_size": 40, "n_layer": 3, "n_head": 5,
            "apply_residual_connection_post_layernorm": true, "layer_norm_epsilon": 1e-6,
            "tie_word_embeddings": false}"#,
    );
}

/// A folder saved in bf16 or fp16 holds weights of that dtype, says so in config.json, reloads
/// here with the rounded weights, and transformers computes the same logits from it.
#[test]
fn half_precision_folders_save_and_reload() {
    let dir = scratch("half");
    run_reference(&[
        "make",
        "qwen2",
        dir.to_str().unwrap(),
        r#"{"vocab_size": 90, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}"#,
    ]);
    let (ids, mask, _) = reference_batch(&dir);
    let (vs, model) = load_causal_lm(&dir.join("model"), Device::Cpu).unwrap();
    for (kind, name) in [(Kind::BFloat16, "bfloat16"), (Kind::Half, "float16")] {
        let saved = dir.join(name);
        model.save(&vs, &saved, kind).unwrap();
        assert_eq!(rlhf_trainer::models::hf::saved_kind(&saved).unwrap(), kind);
        for (tensor_name, t) in Tensor::read_safetensors(saved.join("model.safetensors")).unwrap() {
            assert_eq!(t.kind(), kind, "{name}: {tensor_name}");
        }
        let (reloaded_vs, reloaded) = load_causal_lm(&saved, Device::Cpu).unwrap();
        for (var, original) in vs.variables() {
            let back = &reloaded_vs.variables()[&var];
            assert_eq!(
                *back,
                original.to_kind(kind).to_kind(Kind::Float),
                "{name}: {var}"
            );
        }
        let logits = tch::no_grad(|| reloaded.logits(&ids, Some(&mask)));
        let reference = dir.join(format!("{name}.safetensors"));
        Tensor::write_safetensors(
            &[
                ("input_ids", ids.shallow_clone()),
                ("attention_mask", mask.shallow_clone()),
                ("logits", logits),
            ],
            &reference,
        )
        .unwrap();
        run_reference(&[
            "check",
            saved.to_str().unwrap(),
            reference.to_str().unwrap(),
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
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
fn an_unknown_model_type_is_a_clear_error() {
    let dir = scratch("bert");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let err = load_causal_lm(&dir, Device::Cpu).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .ends_with("config.json: model_type \"bert\" is not supported (gpt2, llama, mistral, qwen2, qwen3, gemma2, gemma3_text, opt, bloom)"),
        "{err}"
    );
}

#[test]
fn unsupported_options_are_errors_naming_file_and_field() {
    let cases = [
        (
            r#"{"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
            "rope_scaling.rope_type \"yarn\" is not supported",
        ),
        (
            r#"{"model_type": "qwen3", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, "hidden_act": "relu"}"#,
            "hidden_act \"relu\" is not supported",
        ),
        (
            r#"{"model_type": "opt", "activation_function": "gelu"}"#,
            "activation_function \"gelu\" is not supported",
        ),
        (
            r#"{"model_type": "gemma3", "text_config": {}}"#,
            "Gemma 3's multimodal model",
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let dir = scratch(&format!("unsupported-{i}"));
        std::fs::write(dir.join("config.json"), config).unwrap();
        let err = load_causal_lm(&dir, Device::Cpu).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("config.json: ") && text.contains(expected),
            "{text}"
        );
    }
}
