//! The algorithms measurably learn the synthetic copy task on a tiny random GPT-2 (CPU, seeded).
use rlhf_spec::{
    BuiltinTokenizer, KlEstimator, ResolvedDpo, ResolvedGeneration, ResolvedPpo, ResolvedTokenizer, ResolvedTraining, StageKind,
    SyntheticTask,
};
use rlhf_trainer::data::Example;
use rlhf_trainer::algorithms::{dpo, ppo, rm, sft};
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

/// A VarStore holding a copy of `source`'s weights (same variable names), frozen or not.
fn copy_of(source: &nn::VarStore, build: impl FnOnce(&nn::VarStore) -> Box<dyn CausalLm>, frozen: bool) -> (nn::VarStore, Box<dyn CausalLm>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = build(&vs);
    vs.copy(source).unwrap();
    if frozen {
        vs.freeze();
    }
    (vs, model)
}

#[test]
fn sft_then_rm_then_ppo_raises_the_reward() {
    let tok = tokenizer();
    let gpt2 = |vs: &nn::VarStore| Box::new(tiny_gpt2(vs)) as Box<dyn CausalLm>;
    // SFT, then a reward model trained on the task's preferences.
    let actor_vs = nn::VarStore::new(Device::Cpu);
    let actor = tiny_gpt2(&actor_vs);
    sft::train(&actor, &actor_vs, &tok, &synthetic(SyntheticTask::Copy, 256, 1, StageKind::Sft), &training(3e-3, 3), Device::Cpu, |_, _| {}).unwrap();
    let mut rm_vs = nn::VarStore::new(Device::Cpu);
    let reward = ScalarHead::attach(&rm_vs, gpt2(&rm_vs));
    rm::train(&reward, &rm_vs, &tok, &synthetic(SyntheticTask::Copy, 1024, 11, StageKind::Rm), &training(2e-3, 6), Device::Cpu, |_, _, _| {}).unwrap();
    rm_vs.freeze();
    // PPO: reference = the SFT model, critic = the reward model.
    let (_ref_vs, reference) = copy_of(&actor_vs, gpt2, true);
    let critic_vs = nn::VarStore::new(Device::Cpu);
    let critic = ScalarHead::attach(&critic_vs, gpt2(&critic_vs));
    let mut critic_vs = critic_vs;
    critic_vs.copy(&rm_vs).unwrap();

    let held_out: Vec<String> = synthetic(SyntheticTask::Copy, 64, 31, StageKind::Ppo)
        .into_iter()
        .map(|e| match e { Example::Prompt { prompt, .. } => prompt, _ => unreachable!() })
        .collect();
    let held_out: Vec<&str> = held_out.iter().map(String::as_str).collect();
    let evaluate = |actor: &dyn CausalLm| ppo::mean_reward(actor, &reward, &tok, &held_out, 16, 12, Device::Cpu).unwrap();
    let before = evaluate(&actor);
    let params = ResolvedPpo {
        kl_coef: 0.05,
        kl_estimator: KlEstimator::K1,
        target_kl: None,
        clip_range: 0.2,
        value_clip_range: 0.2,
        gamma: 1.0,
        lambda: 0.95,
        ppo_epochs: 2,
        rollout_batch_size: 32,
        critic_learning_rate: 1e-4,
        reward_clip: 10.0,
        entropy_coef: 0.0,
        ptx_coef: 0.0,
        ptx_dataset: None,
        generation: ResolvedGeneration { max_new_tokens: 12, temperature: 1.0, top_k: 0, top_p: 1.0 },
    };
    let models = ppo::Models { actor: &actor, actor_vs: &actor_vs, critic: &critic, critic_vs: &critic_vs, reference: reference.as_ref(), reward: &reward };
    let prompts = synthetic(SyntheticTask::Copy, 256, 41, StageKind::Ppo);
    let cfg = ResolvedTraining { max_steps: Some(30), micro_batch_size: 16, ..training(2e-4, 100) };
    let stats = ppo::train(&models, &tok, &prompts, &cfg, &params, Device::Cpu, |s| {
        println!("round {:>2}: reward {:+.3} (std {:.3}) kl {:.4} policy {:+.4} value {:.4} clip {:.3}", s.round, s.reward_mean, s.reward_std, s.kl, s.policy_loss, s.value_loss, s.clip_fraction)
    })
    .unwrap();
    let after = evaluate(&actor);
    let final_kl = stats.last().unwrap().kl;
    println!("PPO held-out mean reward (greedy): before {before:.3}, after {after:.3}; final KL {final_kl:.4}");
    assert!(after > before + 0.5, "PPO should raise the held-out reward clearly: {before:.3} -> {after:.3}");
    assert!(final_kl.abs() < 1.0, "KL to the reference stays bounded: {final_kl:.4}");
}
