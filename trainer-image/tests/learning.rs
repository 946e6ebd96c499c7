//! The algorithms measurably learn the synthetic copy task on a tiny random GPT-2 (CPU, seeded).
use rlhf_spec::{BuiltinTokenizer, ResolvedDpo, ResolvedTokenizer, ResolvedTraining, StageKind, SyntheticTask};
use rlhf_trainer::algorithms::{dpo, rm, sft};
use rlhf_trainer::data::synthetic;
use rlhf_trainer::models::CausalLm;
use rlhf_trainer::models::gpt2::{Gpt2, Gpt2Config};
use rlhf_trainer::models::heads::ScalarHead;
use rlhf_trainer::tokenizer::Tokenizer;
use tch::{Device, nn};

/// libtorch's seed is global and tests run in parallel: initialise under a lock, reseeded, so
/// every run starts from the same weights.
fn tiny_gpt2(vs: &nn::VarStore) -> Gpt2 {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(0);
    let config: Gpt2Config =
        serde_json::from_str(r#"{"vocab_size": 50257, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}"#).unwrap();
    Gpt2::new(vs, config).unwrap()
}

fn training(learning_rate: f64, epochs: u32) -> ResolvedTraining {
    ResolvedTraining {
        learning_rate,
        batch_size: 16,
        micro_batch_size: 8,
        gradient_accumulation: 2,
        epochs,
        max_steps: None,
        max_length: 32,
        warmup_steps: 4,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
        checkpoint_every: 50,
    }
}

fn tokenizer() -> Tokenizer {
    tch::set_num_threads(2);
    Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap()
}

#[test]
fn sft_loss_falls_on_the_copy_task() {
    let tok = tokenizer();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = tiny_gpt2(&vs);
    let examples = synthetic(SyntheticTask::Copy, 256, 1, StageKind::Sft);
    let losses = sft::train(&model, &vs, &tok, &examples, &training(3e-3, 3), Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(losses.len(), 48, "3 epochs x 256 / 16");
    let first = losses[..4].iter().sum::<f64>() / 4.0;
    let last = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    println!("SFT loss: first 4 steps {first:.3}, last 4 steps {last:.3}");
    assert!(last < 0.3 * first, "SFT loss should fall well below its start: {first:.3} -> {last:.3}");
}

#[test]
fn reward_model_ranks_held_out_pairs() {
    let tok = tokenizer();
    let vs = nn::VarStore::new(Device::Cpu);
    let rm = ScalarHead::attach(&vs, Box::new(tiny_gpt2(&vs)) as Box<dyn CausalLm>);
    let train = synthetic(SyntheticTask::Copy, 1024, 11, StageKind::Rm);
    let held_out = synthetic(SyntheticTask::Copy, 128, 12, StageKind::Rm);
    let before = rm::accuracy(&rm, &tok, &held_out, 32, 32, Device::Cpu).unwrap();
    rm::train(&rm, &vs, &tok, &train, &training(2e-3, 6), Device::Cpu, |_, _, _| {}).unwrap();
    let after = rm::accuracy(&rm, &tok, &held_out, 32, 32, Device::Cpu).unwrap();
    println!("RM held-out pairwise accuracy: before {before:.3}, after {after:.3}");
    assert!(after >= 0.9, "reward model accuracy on held-out pairs: {after:.3}");
}

#[test]
fn dpo_raises_the_chosen_vs_rejected_margin() {
    let tok = tokenizer();
    let vs = nn::VarStore::new(Device::Cpu);
    let policy = tiny_gpt2(&vs);
    let mut ref_vs = nn::VarStore::new(Device::Cpu);
    let reference = tiny_gpt2(&ref_vs);
    ref_vs.copy(&vs).unwrap();
    ref_vs.freeze();
    let params = ResolvedDpo { beta: 0.1, label_smoothing: 0.0 };
    let train = synthetic(SyntheticTask::Copy, 512, 21, StageKind::Dpo);
    let held_out = synthetic(SyntheticTask::Copy, 128, 22, StageKind::Dpo);
    let (before, _) = dpo::margin(&policy, &reference, &tok, &held_out, 32, params.beta, Device::Cpu).unwrap();
    dpo::train(&policy, &vs, &reference, &tok, &train, &training(1e-3, 2), &params, Device::Cpu, |_, _| {}).unwrap();
    let (after, share) = dpo::margin(&policy, &reference, &tok, &held_out, 32, params.beta, Device::Cpu).unwrap();
    println!("DPO held-out reward margin: before {before:.3}, after {after:.3} ({:.0}% of pairs positive)", share * 100.0);
    assert!(before.abs() < 1e-6, "policy = reference at the start");
    assert!(after > 0.5 && share > 0.85, "DPO margin {after:.3}, positive on {share:.3} of pairs");
}
