//! Activation checkpointing: the recomputed backward pass gives the same gradients as the
//! recorded one, for every block design, with and without LoRA adapters.
use rlhf_spec::ResolvedLora;
use rlhf_trainer::algorithms::backward;
use rlhf_trainer::models::{CausalLm, causal_lm_from_config, lora};
use tch::{Device, Kind, Tensor, nn};

/// GPT-2, Llama with grouped-query attention, Gemma 3 (sandwich norms, q/k norms, sliding
/// and global blocks with their own rotary tables, a window shorter than the batch), OPT with its
/// embedding projected in and out, and BLOOM (ALiBi, residuals from the normed inputs).
const FAMILIES: [(&str, &str); 5] = [
    (
        "gpt2",
        r#"{"model_type": "gpt2", "vocab_size": 96, "n_positions": 32, "n_embd": 32, "n_layer": 3, "n_head": 4}"#,
    ),
    (
        "llama",
        r#"{"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}"#,
    ),
    (
        "gemma3_text",
        r#"{"model_type": "gemma3_text", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 3, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}"#,
    ),
    (
        "opt",
        r#"{"model_type": "opt", "vocab_size": 96, "hidden_size": 32, "word_embed_proj_dim": 16, "ffn_dim": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 16}"#,
    ),
    (
        "bloom",
        r#"{"model_type": "bloom", "vocab_size": 96, "hidden_size": 36, "n_layer": 3, "n_head": 6, "apply_residual_connection_post_layernorm": true}"#,
    ),
];

fn build(family: &str, vs: &nn::VarStore) -> Box<dyn CausalLm> {
    tch::manual_seed(7);
    let (_, config) = FAMILIES.iter().find(|(f, _)| *f == family).unwrap();
    let config: serde_json::Value = serde_json::from_str(config).unwrap();
    let model = causal_lm_from_config(&config, std::path::Path::new(family), vs).unwrap();
    // Gemma's norms start at their identity (w = 0); move them (in name order, so both runs
    // draw the same numbers) so that the gradients test them.
    let mut norms: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.contains("norm"))
        .collect();
    norms.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (_, t) in norms {
            t.shallow_clone().copy_(&(t.rand_like() * 0.1 + &t));
        }
    });
    model
}

/// Gradients of a next-token loss on a left-padded batch, by variable name; `finish: false`
/// stops after `loss.backward()` (before the recomputation).
fn gradients(family: &str, checkpointing: bool, with_lora: bool) -> Vec<(String, Tensor)> {
    gradients_of(family, checkpointing, with_lora, true)
}

fn gradients_of(
    family: &str,
    checkpointing: bool,
    with_lora: bool,
    finish: bool,
) -> Vec<(String, Tensor)> {
    // libtorch's RNG is global and tests run in parallel: seed and initialise one at a time.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let vs = nn::VarStore::new(Device::Cpu);
    let model = build(family, &vs);
    if with_lora {
        let cfg = ResolvedLora {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec![
                "c_attn".into(),
                "q_proj".into(),
                "down_proj".into(),
                "fc2".into(),
                "query_key_value".into(),
            ],
        };
        let targets: Vec<String> = cfg
            .target_modules
            .iter()
            .filter(|m| model.projections().iter().any(|p| p.module() == m.as_str()))
            .cloned()
            .collect();
        lora::attach(
            model.as_ref(),
            &vs,
            &ResolvedLora {
                target_modules: targets,
                ..cfg
            },
            &[],
        )
        .unwrap();
        // Non-zero B, so the adapters matter.
        tch::no_grad(|| {
            vs.variables()
                .iter()
                .filter(|(k, _)| k.contains("lora_B"))
                .for_each(|(_, t)| {
                    t.shallow_clone()
                        .copy_(&(Tensor::ones(t.size(), (Kind::Float, Device::Cpu)) * 0.1))
                })
        });
    }
    model.set_checkpointing(checkpointing);
    let ids = Tensor::from_slice(&[0i64, 0, 5, 9, 13, 2, 7, 8, 1, 4, 6, 3]).view([2, 6]);
    let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 6]);
    let logits = model.logits(&ids, Some(&mask));
    let loss = logits
        .narrow(1, 0, 5)
        .log_softmax(-1, Kind::Float)
        .gather(2, &ids.narrow(1, 1, 5).unsqueeze(-1), false)
        .mean(Kind::Float)
        .neg();
    if finish {
        backward(&loss, &[model.as_ref()]);
    } else {
        loss.backward();
    }
    let mut grads: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| {
            let g = t.grad();
            (k, if g.defined() { g.copy() } else { g })
        })
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

#[test]
fn recomputed_blocks_give_the_same_gradients() {
    for (family, _) in FAMILIES {
        for with_lora in [false, true] {
            let (plain, recomputed) = (
                gradients(family, false, with_lora),
                gradients(family, true, with_lora),
            );
            assert_eq!(plain.len(), recomputed.len());
            let mut worst = 0.0f64;
            for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
                assert!(
                    a.defined() && b.defined(),
                    "{family}: {name} has no gradient"
                );
                let scale = a.abs().max().double_value(&[]).max(1e-6);
                worst = worst.max((a - b).abs().max().double_value(&[]) / scale);
            }
            println!(
                "{family} (lora: {with_lora}): {} gradients, worst relative difference {worst:.2e}",
                plain.len()
            );
            assert!(
                worst < 1e-4,
                "{family}: recomputed gradients differ by {worst}"
            );
        }
    }
}

#[test]
fn checkpointed_blocks_get_their_gradients_only_from_the_recomputation() {
    for (family, _) in FAMILIES {
        let partial = gradients_of(family, true, false, false);
        let missing: Vec<&str> = partial
            .iter()
            .filter(|(_, g)| !g.defined())
            .map(|(k, _)| k.as_str())
            .collect();
        assert!(
            missing.iter().any(|k| k.contains(".0.")),
            "{family}: block 0 must wait for the recomputation: {missing:?}"
        );
    }
}
