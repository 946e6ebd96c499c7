use tch::{Device, Kind, Tensor, nn};

use super::experience::{Experience, Sampling, make_experience, sample};
use super::learn::{LearnSettings, StepShape, learn, token_entropy};
use super::scoring::{RewardSources, Scorer, Source};
use super::{Critic, Estimator, Models, PromptRow};
use crate::algorithms::optim::Optimizer;
use crate::distributed::Dist;
use crate::models::CausalLm;
use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::models::heads::ScalarHead;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{
    BuiltinTokenizer, KlEstimator, LossAggregation, ResolvedGeneration, ResolvedPpo, ResolvedRl,
    ResolvedTokenizer, ResolvedTraining,
};

const PROMPTS: [&str; 4] = ["copy: a b c", "copy: d e", "1+2=", "copy: owl"];

fn rows() -> Vec<PromptRow<'static>> {
    PROMPTS
        .iter()
        .map(|p| PromptRow {
            prompt: p,
            reference: None,
        })
        .collect()
}

fn tiny_gpt2(vs: &nn::VarStore) -> Gpt2 {
    let config: Gpt2Config = serde_json::from_str(
        r#"{"vocab_size": 50257, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}"#,
    )
    .unwrap();
    Gpt2::new(vs, config).unwrap()
}

/// Actor (also the reference), critic and a reward model, seeded.
struct Fixture {
    actor_vs: nn::VarStore,
    actor: Gpt2,
    critic_vs: nn::VarStore,
    critic: ScalarHead,
    rewards: RewardSources,
    tok: Tokenizer,
}

fn fixture() -> Fixture {
    tch::manual_seed(0);
    let head = |vs: &nn::VarStore| ScalarHead::attach(vs, Box::new(tiny_gpt2(vs)));
    let actor_vs = nn::VarStore::new(Device::Cpu);
    let actor = tiny_gpt2(&actor_vs);
    let critic_vs = nn::VarStore::new(Device::Cpu);
    let critic = head(&critic_vs);
    let reward_vs = nn::VarStore::new(Device::Cpu);
    let reward = head(&reward_vs);
    let rewards = RewardSources {
        sources: vec![Source {
            name: "rm".into(),
            weight: 1.0,
            scorer: Scorer::Model {
                head: reward,
                vs: reward_vs,
            },
        }],
        max_new_tokens: 6,
    };
    let tok = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
    Fixture {
        actor_vs,
        actor,
        critic_vs,
        critic,
        rewards,
        tok,
    }
}

impl Fixture {
    fn models(&self) -> Models<'_> {
        Models {
            actor: &self.actor,
            actor_vs: &self.actor_vs,
            critic: Some(Critic {
                head: &self.critic,
                vs: &self.critic_vs,
            }),
            reference: &self.actor,
            reference_vs: &self.actor_vs,
            rewards: &self.rewards,
            dynamic_sampling: false,
        }
    }
}

fn rl(temperature: f64, entropy_coef: f64) -> ResolvedRl {
    ResolvedRl {
        kl_coef: 0.05,
        kl_estimator: KlEstimator::K1,
        kl_in_reward: true,
        target_kl: None,
        clip_range: 0.2,
        clip_range_high: 0.2,
        update_epochs: 1,
        rollout_batch_size: 4,
        group_size: 1,
        reward_clip: 10.0,
        entropy_coef,
        missing_eos_penalty: 0.0,
        ptx_coef: 0.0,
        ptx_dataset: None,
        generation: ResolvedGeneration {
            max_new_tokens: 6,
            temperature,
            top_k: 0,
            top_p: 1.0,
        },
        rewards: Vec::new(),
    }
}

const PPO: ResolvedPpo = ResolvedPpo {
    value_clip_range: 0.2,
    gamma: 1.0,
    lambda: 0.95,
    critic_learning_rate: 1e-3,
};

fn seeds(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| SplitMix64::derive(7, i)).collect()
}

fn experience(f: &Fixture, rl: &ResolvedRl) -> Experience {
    let sampling = Sampling {
        tok: &f.tok,
        generation: &rl.generation,
        max_length: 16,
    };
    let estimator = Estimator::Gae {
        gamma: 1.0,
        lambda: 0.95,
    };
    let dist = Dist::single();
    let models = f.models();
    make_experience(
        &models,
        &rows(),
        seeds(4),
        &sampling,
        rl,
        &estimator,
        0.05,
        Device::Cpu,
        &dist,
    )
    .unwrap()
}

#[test]
fn old_logprobs_are_taken_at_the_sampling_temperature() {
    let f = fixture();
    let exp = experience(&f, &rl(0.7, 0.0));
    let n = exp.sequences.size()[1] - exp.prompt_len;
    let logits = tch::no_grad(|| f.actor.logits(&exp.sequences, Some(&exp.attention_mask)))
        .narrow(1, exp.prompt_len - 1, n)
        .to_kind(Kind::Float);
    let tokens = exp.sequences.narrow(1, exp.prompt_len, n).unsqueeze(-1);
    let expected = (logits / 0.7)
        .log_softmax(-1, Kind::Float)
        .gather(-1, &tokens, false)
        .squeeze_dim(-1);
    let diff = (&exp.logp - &expected).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "old log-probs differ from T = 0.7 by {diff}");
}

#[test]
fn a_row_samples_the_same_response_alone_or_in_a_batch() {
    let f = fixture();
    let generation = rl(1.0, 0.0).generation;
    let sampling = Sampling {
        tok: &f.tok,
        generation: &generation,
        max_length: 16,
    };
    let models = f.models();
    let together = sample(&models, &PROMPTS, seeds(4), &sampling, Device::Cpu).unwrap();
    // As two ranks of two rows would: rows 2 and 3 keep their round-wide seeds.
    let second_half = sample(
        &models,
        &PROMPTS[2..],
        seeds(4)[2..].to_vec(),
        &sampling,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(together.texts[2..], second_half.texts[..]);
    let reseeded = sample(
        &models,
        &PROMPTS,
        seeds(5)[1..].to_vec(),
        &sampling,
        Device::Cpu,
    );
    assert_ne!(together.texts, reseeded.unwrap().texts, "seeds must matter");
}

fn training(batch: u32, micro: u32) -> ResolvedTraining {
    ResolvedTraining {
        learning_rate: 1e-3,
        batch_size: batch,
        micro_batch_size: micro,
        gradient_accumulation: batch / micro,
        epochs: 1,
        max_steps: None,
        max_length: 16,
        warmup_steps: 0,
        weight_decay: 0.0,
        adam_epsilon: 1e-8,
        weight_decay_embeddings: false,
        max_grad_norm: 1.0,
        seed: 0,
        checkpoint_every: 50,
    }
}

/// The actor's weights after one learning phase on `exp` in micro-batches of `micro` (one
/// optimizer step of all four rows), and the entropy metric; the weights are put back
/// afterwards so every call starts from the same ones.
fn learn_once(f: &Fixture, exp: &Experience, rl: &ResolvedRl, micro: i64) -> (Vec<Tensor>, f64) {
    let saved: Vec<_> = f
        .actor_vs
        .variables()
        .into_iter()
        .chain(f.critic_vs.variables())
        .map(|(n, t)| (n, t.shallow_clone(), t.copy()))
        .collect();
    let dist = Dist::single();
    let cfg = training(4, micro as u32);
    let mut actor_opt = Optimizer::new(&f.actor_vs, &cfg, &dist).unwrap();
    let mut critic_opt = Optimizer::new(&f.critic_vs, &cfg, &dist).unwrap();
    let settings = LearnSettings {
        rl,
        ppo: Some(&PPO),
        aggregation: LossAggregation::TokenMean,
        shape: StepShape {
            rows_per_step: 4,
            micro,
        },
        kl_coef: 0.05,
    };
    let stats = learn(
        &f.models(),
        exp,
        (&mut actor_opt, Some(&mut critic_opt)),
        &settings,
        3,
        &dist,
        || Ok(None),
    )
    .unwrap();
    let mut names: Vec<_> = f.actor_vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let after = names.into_iter().map(|(_, t)| t.copy()).collect();
    tch::no_grad(|| {
        for (_, live, t) in &saved {
            live.shallow_clone().copy_(t);
        }
    });
    (after, stats.entropy)
}

#[test]
fn accumulating_micro_batches_steps_like_the_whole_batch() {
    let f = fixture();
    let rl = rl(1.0, 0.0);
    let exp = experience(&f, &rl);
    let mut before: Vec<_> = f.actor_vs.variables().into_iter().collect();
    before.sort_by(|a, b| a.0.cmp(&b.0));
    let (whole, _) = learn_once(&f, &exp, &rl, 4);
    let (accumulated, _) = learn_once(&f, &exp, &rl, 1);
    let (mut moved, mut diff) = (0.0f64, 0.0f64);
    for ((a, b), (_, start)) in whole.iter().zip(&accumulated).zip(&before) {
        diff = diff.max((a - b).abs().max().double_value(&[]));
        moved = moved.max((a - start).abs().max().double_value(&[]));
    }
    assert!(moved > 1e-5, "the step must move the weights ({moved})");
    // Equal up to float rounding, which Adam's per-weight normalisation amplifies for weights
    // with near-zero gradients (and libtorch's reduction order varies between runs: 2.8e-6 and
    // 4.8e-6 were seen against steps of ~1e-3): within 1% of the largest step. A micro-batch
    // that stepped on its own would differ by a whole step.
    assert!(
        diff < 0.01 * moved,
        "accumulation differs by {diff} (largest step {moved})"
    );
}

#[test]
fn the_entropy_metric_is_the_same_in_the_loss_or_not() {
    let f = fixture();
    let exp = experience(&f, &rl(0.7, 0.0));
    let (_, without) = learn_once(&f, &exp, &rl(0.7, 0.0), 4);
    let (_, with) = learn_once(&f, &exp, &rl(0.7, 1e-9), 4);
    assert!(
        (without - with).abs() < 1e-6,
        "entropy {without} (coef 0) vs {with} (coef 1e-9)"
    );
    assert!(without > 0.0);
}

#[test]
fn the_entropy_keeps_a_graph_only_in_the_loss() {
    let logits = Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    assert!(!token_entropy(&logits, false).requires_grad());
    assert!(token_entropy(&logits, true).requires_grad());
}
