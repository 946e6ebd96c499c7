//! LoRA: adapters start as a no-op, only they train, switching them off gives the base model
//! back (PPO's and DPO's reference), a saved folder is the plain model with the adapters merged,
//! and a LoRA stage (here with zero2, offload and activation checkpointing too) checkpoints only
//! the adapters.
mod common;

use common::{run_local, run_reference, scratch, tiny_job};
use rlhf_spec::ResolvedLora;
use rlhf_trainer::models::lora::{self, WithoutAdapters};
use rlhf_trainer::models::{CausalLm, load_causal_lm};
use tch::{Device, Kind, Tensor, nn};

fn lora_config(modules: &[&str]) -> ResolvedLora {
    ResolvedLora {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: modules.iter().map(|m| m.to_string()).collect(),
    }
}

fn ids() -> Tensor {
    Tensor::from_slice(&[5i64, 17, 3, 99, 42, 7]).view([1, 6])
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn adapters_train_alone_switch_off_and_merge_on_save() {
    let dir = scratch("lora");
    for (family, config, modules) in [
        (
            "gpt2",
            r#"{"vocab_size": 128, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}"#,
            vec!["c_attn", "c_proj", "c_fc"],
        ),
        (
            "llama",
            r#"{"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}"#,
            vec!["q_proj", "v_proj", "down_proj"],
        ),
    ] {
        let out = dir.join(family);
        run_reference(&["make", family, out.to_str().unwrap(), config]);
        let (vs, lm) = load_causal_lm(&out.join("model"), Device::Cpu).unwrap();
        let before = lm.logits(&ids(), None);
        let n = lora::attach(lm.as_ref(), &vs, &lora_config(&modules), &[]).unwrap();
        assert_eq!(
            n,
            if family == "gpt2" { 8 } else { 6 },
            "{family}: adapted projections"
        );
        assert!(
            max_diff(&before, &lm.logits(&ids(), None)) == 0.0,
            "{family}: B starts at zero, so the model is unchanged"
        );
        let trainable: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            trainable.len(),
            2 * n,
            "{family}: only A and B train: {trainable:?}"
        );
        // Move every B away from zero, as training would.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.contains(".lora_B.") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.5));
                }
            }
        });
        let adapted = lm.logits(&ids(), None);
        assert!(
            max_diff(&before, &adapted) > 1e-3,
            "{family}: adapters now change the output"
        );
        let base = WithoutAdapters(lm.as_ref()).logits(&ids(), None);
        assert!(
            max_diff(&before, &base) == 0.0,
            "{family}: adapters off is the base model"
        );
        assert!(
            max_diff(&adapted, &lm.logits(&ids(), None)) == 0.0,
            "{family}: and they come back on"
        );
        // Saved: a plain folder (no adapter tensors) whose logits are the adapted model's.
        let saved = out.join("merged");
        lm.save(&vs, &saved, Kind::Float).unwrap();
        let names: Vec<String> = Tensor::read_safetensors(saved.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(
            names.iter().all(|k| !k.contains("lora")),
            "{family}: {names:?}"
        );
        let (_vs2, merged) = load_causal_lm(&saved, Device::Cpu).unwrap();
        let diff = max_diff(&adapted, &merged.logits(&ids(), None));
        println!("{family}: merged model vs adapted model, max logit difference {diff:.2e}");
        assert!(diff < 1e-4, "{family}: merged logits differ by {diff}");
    }
    let bad = lora::attach(
        load_causal_lm(&dir.join("gpt2/model"), Device::Cpu)
            .unwrap()
            .1
            .as_ref(),
        &nn::VarStore::new(Device::Cpu),
        &lora_config(&["q_proj"]),
        &[],
    );
    let err = bad.unwrap_err().to_string();
    assert!(
        err.contains("match no projection") && err.contains("c_attn"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lora_composes_with_zero2_offload_and_checkpointing_and_ppo_reuses_the_base() {
    let dir = scratch("lora-stage");
    let stages = "
    - {name: sft, kind: sft, dataset: {synthetic: {task: copy, samples: 32}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32, maxSteps: 2}}
    - {name: rm, kind: rm, dataset: {synthetic: {task: copy, samples: 16}}, training: {batchSize: 8, microBatchSize: 4, maxLength: 32, maxSteps: 1}}
    - name: ppo
      kind: ppo
      dependsOn: [sft, rm]
      dataset: {synthetic: {task: copy, samples: 32}}
      models: {init: {stage: sft}, rewardModel: {stage: rm}}
      training: {batchSize: 8, microBatchSize: 2, maxSteps: 2, maxLength: 32}
      rl: {rolloutBatchSize: 8, generation: {maxNewTokens: 6}}
";
    let parallelism = "{nodes: 1, gpusPerNode: 2, strategy: zero2, offload: all, gradientCheckpointing: true, lora: {rank: 4}}";
    let (_, stdout) = run_local(&dir, "run", &tiny_job("lora", parallelism, stages));
    assert!(
        stdout.contains("sft: LoRA rank 4 on 7 projections"),
        "{stdout}"
    );
    let checkpoint = dir.join("run/sft/checkpoints/step-00000002/tensors.safetensors");
    let names: Vec<String> = Tensor::read_safetensors(checkpoint)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|k| k.contains(".lora_")),
        "adapters only: {names:?}"
    );
    let rm_names: Vec<String> =
        Tensor::read_safetensors(dir.join("run/rm/checkpoints/step-00000001/tensors.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
    assert!(
        rm_names.iter().any(|k| k.ends_with("score.weight")),
        "the reward head trains fully: {rm_names:?}"
    );
    for stage in ["sft", "ppo"] {
        let names: Vec<String> =
            Tensor::read_safetensors(dir.join(format!("run/{stage}/model/model.safetensors")))
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
        assert!(
            names.iter().all(|k| !k.contains("lora")),
            "{stage}: saved merged: {names:?}"
        );
    }
    assert!(
        stdout.contains("ppo: reference = the trained model with its adapters off"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
