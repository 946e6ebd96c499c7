//! SFT measurably learns the synthetic copy task on a tiny random GPT-2 (CPU, seeded).
use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer, ResolvedTraining, StageKind, SyntheticTask};
use rlhf_trainer::algorithms::sft;
use rlhf_trainer::data::synthetic;
use rlhf_trainer::models::gpt2::{Gpt2, Gpt2Config};
use rlhf_trainer::tokenizer::Tokenizer;
use tch::{Device, nn};

#[test]
fn sft_loss_falls_on_the_copy_task() {
    tch::manual_seed(0);
    tch::set_num_threads(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let config: Gpt2Config = serde_json::from_str(r#"{"vocab_size": 50257, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}"#).unwrap();
    let model = Gpt2::new(&vs, config).unwrap();
    let tok = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
    let examples = synthetic(SyntheticTask::Copy, 256, 1, StageKind::Sft);
    let cfg = ResolvedTraining {
        learning_rate: 3e-3,
        batch_size: 16,
        micro_batch_size: 8,
        gradient_accumulation: 2,
        epochs: 3,
        max_steps: None,
        max_length: 32,
        warmup_steps: 4,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
        checkpoint_every: 50,
    };
    let losses = sft::train(&model, &vs, &tok, &examples, &cfg, Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(losses.len(), 48, "3 epochs x 256 / 16");
    let first = losses[..4].iter().sum::<f64>() / 4.0;
    let last = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    println!("SFT loss: first 4 steps {first:.3}, last 4 steps {last:.3}");
    assert!(last < 0.3 * first, "SFT loss should fall well below its start: {first:.3} -> {last:.3}");
}
