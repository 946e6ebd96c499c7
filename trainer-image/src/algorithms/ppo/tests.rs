use tch::{Device, Kind, nn};

use super::Models;
use super::experience::{Experience, Sampling, make_experience};
use super::learn::{learn, mean_entropy};
use crate::algorithms::optim::Optimizer;
use crate::distributed::Dist;
use crate::models::CausalLm;
use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::models::heads::ScalarHead;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{
    BuiltinTokenizer, KlEstimator, ResolvedGeneration, ResolvedPpo, ResolvedTokenizer,
    ResolvedTraining,
};

const PROMPTS: [&str; 2] = ["copy: a b c", "copy: d e"];

fn tiny_gpt2(vs: &nn::VarStore) -> Gpt2 {
    let config: Gpt2Config = serde_json::from_str(
        r#"{"vocab_size": 50257, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}"#,
    )
    .unwrap();
    Gpt2::new(vs, config).unwrap()
}

/// Actor (also the reference), critic and reward model, seeded.
struct Fixture {
    actor_vs: nn::VarStore,
    actor: Gpt2,
    critic_vs: nn::VarStore,
    critic: ScalarHead,
    reward_vs: nn::VarStore,
    reward: ScalarHead,
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
    Fixture {
        actor_vs,
        actor,
        critic_vs,
        critic,
        reward_vs,
        reward,
    }
}

impl Fixture {
    fn models(&self) -> Models<'_> {
        Models {
            actor: &self.actor,
            actor_vs: &self.actor_vs,
            critic: &self.critic,
            critic_vs: &self.critic_vs,
            reference: &self.actor,
            reference_vs: &self.actor_vs,
            reward: &self.reward,
            reward_vs: &self.reward_vs,
        }
    }
}

fn ppo(temperature: f64, entropy_coef: f64) -> ResolvedPpo {
    ResolvedPpo {
        kl_coef: 0.05,
        kl_estimator: KlEstimator::K1,
        target_kl: None,
        clip_range: 0.2,
        value_clip_range: 0.2,
        gamma: 1.0,
        lambda: 0.95,
        ppo_epochs: 1,
        rollout_batch_size: 2,
        critic_learning_rate: 1e-5,
        reward_clip: 10.0,
        entropy_coef,
        ptx_coef: 0.0,
        ptx_dataset: None,
        generation: ResolvedGeneration {
            max_new_tokens: 6,
            temperature,
            top_k: 0,
            top_p: 1.0,
        },
    }
}

fn experience(f: &Fixture, ppo: &ResolvedPpo) -> Experience {
    let tok = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
    let sampling = Sampling {
        tok: &tok,
        generation: &ppo.generation,
        max_length: 16,
        seed: 1,
    };
    make_experience(&f.models(), &PROMPTS, &sampling, ppo, 0.05, Device::Cpu).unwrap()
}

#[test]
fn old_logprobs_are_taken_at_the_sampling_temperature() {
    let f = fixture();
    let exp = experience(&f, &ppo(0.7, 0.0));
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

fn training() -> ResolvedTraining {
    ResolvedTraining {
        learning_rate: 1e-3,
        batch_size: 2,
        micro_batch_size: 2,
        gradient_accumulation: 1,
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

/// The entropy metric of one learning phase (one micro-batch) on `exp`; the actor's weights
/// are put back afterwards so every call starts from the same ones.
fn learned_entropy(f: &Fixture, exp: &Experience, entropy_coef: f64) -> f64 {
    let saved: Vec<_> = f
        .actor_vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let ppo = ppo(0.7, entropy_coef);
    let dist = Dist::single();
    let mut actor_opt = Optimizer::new(&f.actor_vs, &training(), &dist).unwrap();
    let mut critic_opt = Optimizer::new(&f.critic_vs, &training(), &dist).unwrap();
    let stats = learn(
        &f.models(),
        exp,
        (&mut actor_opt, &mut critic_opt),
        &ppo,
        2,
        1.0,
        || Ok(None),
    )
    .unwrap();
    let vars = f.actor_vs.variables();
    tch::no_grad(|| {
        for (name, t) in &saved {
            vars[name].shallow_clone().copy_(t);
        }
    });
    stats.entropy
}

#[test]
fn the_entropy_metric_is_the_same_in_the_loss_or_not() {
    let f = fixture();
    let exp = experience(&f, &ppo(0.7, 0.0));
    let without = learned_entropy(&f, &exp, 0.0);
    let with = learned_entropy(&f, &exp, 1e-9);
    assert!(
        (without - with).abs() < 1e-6,
        "entropy {without} (coef 0) vs {with} (coef 1e-9)"
    );
    assert!(without > 0.0);
}

#[test]
fn the_entropy_keeps_a_graph_only_in_the_loss() {
    let logits = tch::Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mask = tch::Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    assert!(!mean_entropy(&logits, &mask, false).requires_grad());
    assert!(mean_entropy(&logits, &mask, true).requires_grad());
}
