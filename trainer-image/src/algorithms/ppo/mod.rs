//! PPO (InstructGPT recipe): make experience with the actor, score it with the reward model,
//! penalise per-token KL to the reference, estimate advantages with token-level GAE against the
//! critic, then several clipped policy and value updates on that experience (plus the optional
//! pretraining loss). Behaviour log-probs come from the actor's full distribution, recomputed
//! after sampling: the top-k/top-p filtered sampling distribution is not the policy being
//! optimised. Rounds checkpoint and resume through [`Progress`].
pub mod experience;
pub mod learn;

use serde_json::{Value, json};
use tch::{Device, Kind, nn};

use super::losses::KlController;
use super::optim::Optimizer;
use crate::batch::{SequenceBatch, join, pad};
use crate::checkpoint::Snapshot;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::models::heads::ScalarHead;
use crate::models::{CausalLm, parameter_count};
use crate::progress::{PhaseClock, Progress};
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use experience::{Sampling, make_experience};
use learn::{LearnStats, learn};
use rlhf_spec::{ResolvedPpo, ResolvedTraining};

/// The four models of PPO. Actor and critic train; reference and reward model are frozen.
pub struct Models<'a> {
    pub actor: &'a dyn CausalLm,
    pub actor_vs: &'a nn::VarStore,
    pub critic: &'a ScalarHead,
    pub critic_vs: &'a nn::VarStore,
    pub reference: &'a dyn CausalLm,
    pub reference_vs: &'a nn::VarStore,
    pub reward: &'a ScalarHead,
    pub reward_vs: &'a nn::VarStore,
}

/// The data of a PPO stage: prompts, and prompt/response pairs for the ptx loss (may be empty).
pub struct Data<'a> {
    pub tok: &'a Tokenizer,
    pub prompts: &'a [Example],
    pub ptx: &'a [Example],
}

fn prompts_of(examples: &[Example]) -> Result<Vec<&str>> {
    examples
        .iter()
        .map(|e| match e {
            Example::Prompt { prompt, .. } => Ok(prompt.as_str()),
            other => Err(Error::invalid("<dataset>", format!("a ppo stage needs prompt examples, got {other:?}"))),
        })
        .collect()
}

/// FLOPs (README: the FLOP formula) of making experience: sampling runs the actor forward over
/// every position (2N per position), scoring runs all four models forward once.
fn experience_flops(m: &Models<'_>, positions: f64) -> f64 {
    let n = |vs: &nn::VarStore| parameter_count(vs) as f64;
    2.0 * positions * (2.0 * n(m.actor_vs) + n(m.reference_vs) + n(m.critic_vs) + n(m.reward_vs))
}

/// FLOPs of learning: each PPO epoch runs actor and critic forward and backward (6N), plus the
/// actor on the ptx positions.
fn learn_flops(m: &Models<'_>, positions: f64, ppo_epochs: u32, ptx_tokens: f64) -> f64 {
    let n = |vs: &nn::VarStore| parameter_count(vs) as f64;
    f64::from(ppo_epochs) * 6.0 * positions * (n(m.actor_vs) + n(m.critic_vs)) + 6.0 * ptx_tokens * n(m.actor_vs)
}

fn round_record(round: u64, exp: &experience::Experience, kl_coef: f64, l: &LearnStats, phases: Value) -> Value {
    let mut r = json!({"step": round, "reward_mean": exp.scores.mean(Kind::Float).double_value(&[]),
        "reward_std": exp.scores.std(true).double_value(&[]), "kl": exp.mean_kl(), "kl_coef": kl_coef,
        "entropy": l.entropy, "policy_loss": l.policy_loss, "value_loss": l.value_loss,
        "clip_fraction": l.clip_fraction, "phases": phases});
    if let Some(ptx) = l.ptx_loss {
        r["ptx_loss"] = json!(ptx);
    }
    r
}

/// Runs PPO: each round samples `rolloutBatchSize` prompts; rounds continue for `epochs` passes
/// over the prompts or until `maxSteps` rounds. Every round is recorded in `progress`; a restart
/// resumes from the newest checkpoint (weights, optimizer moments, RNG, KL controller).
pub fn train(m: &Models<'_>, data: &Data<'_>, cfg: &ResolvedTraining, ppo: &ResolvedPpo, device: Device, progress: &mut Progress) -> Result<Vec<Value>> {
    let prompts = prompts_of(data.prompts)?;
    let ptx = super::sft::pairs(data.ptx)?;
    let mut actor_opt = Optimizer::new(m.actor_vs, cfg)?;
    let critic_cfg = ResolvedTraining { learning_rate: ppo.critic_learning_rate, ..cfg.clone() };
    let mut critic_opt = Optimizer::new(m.critic_vs, &critic_cfg)?;
    let rollout = ppo.rollout_batch_size as usize;
    let rounds_per_epoch = (prompts.len() / rollout).max(1) as u64;
    let total = cfg.max_steps.unwrap_or(u64::MAX).min(rounds_per_epoch * u64::from(cfg.epochs));
    let mut kl_ctl = KlController::new(ppo.kl_coef, ppo.target_kl, 10_000);
    let mut rng = SplitMix64(cfg.seed);
    let mut first = 1;
    if let Some(r) = progress.resume()? {
        let saved = |key: &str| r.state[key].as_u64().ok_or_else(|| Error::invalid(r.dir.join("state.json"), format!("`{key}` is missing")));
        actor_opt.import("actor", &r.tensors, saved("actor_steps")?)?;
        critic_opt.import("critic", &r.tensors, saved("critic_steps")?)?;
        rng = SplitMix64(saved("rng")?);
        kl_ctl.set_value(r.state["kl_coef"].as_f64().unwrap_or(ppo.kl_coef));
        first = r.step + 1;
    }
    let micro = i64::from(cfg.micro_batch_size);
    let mut records = Vec::new();
    for round in first..=total {
        let clock = PhaseClock::start();
        let picked: Vec<&str> = (0..rollout).map(|_| prompts[rng.below(prompts.len() as u64) as usize]).collect();
        let sampling = Sampling { tok: data.tok, generation: &ppo.generation, max_length: cfg.max_length, seed: (cfg.seed as i64).wrapping_add(round as i64) };
        let exp = make_experience(m, &picked, &sampling, ppo, kl_ctl.value(), device)?;
        let positions = exp.positions() as f64;
        let exp_flops = experience_flops(m, positions);
        let experience_phase = clock.rates(rollout as f64, positions, exp_flops);
        let learn_clock = PhaseClock::start();
        let mut ptx_batch = || -> Result<Option<SequenceBatch>> {
            if ppo.ptx_coef <= 0.0 || ptx.is_empty() {
                return Ok(None);
            }
            let rows = (0..micro).map(|_| {
                let (p, r) = ptx[rng.below(ptx.len() as u64) as usize];
                join(data.tok, p, r, cfg.max_length as usize)
            });
            Ok(Some(pad(&rows.collect::<Result<Vec<_>>>()?, i64::from(data.tok.pad_token_id), device)))
        };
        let stats = learn(m, &exp, (&mut actor_opt, &mut critic_opt), ppo, micro, &mut ptx_batch)?;
        let learned = f64::from(ppo.ppo_epochs) * rollout as f64;
        let learn_flops = learn_flops(m, positions, ppo.ppo_epochs, stats.ptx_tokens as f64);
        let phases = json!({
            "experience": experience_phase,
            "learn": learn_clock.rates(learned, learned / rollout as f64 * positions, learn_flops),
            "train": clock.rates(rollout as f64, positions, exp_flops + learn_flops),
        });
        let record = round_record(round, &exp, kl_ctl.value(), &stats, phases);
        kl_ctl.update(exp.mean_kl(), rollout as u64);
        progress.record(record.clone());
        records.push(record);
        progress.step_done(round, round == total, || {
            let mut tensors = Vec::new();
            actor_opt.export("actor", &mut tensors);
            critic_opt.export("critic", &mut tensors);
            let state = json!({"round": round, "rng": rng.0, "kl_coef": kl_ctl.value(), "actor_steps": actor_opt.steps(), "critic_steps": critic_opt.steps()});
            Snapshot { step: round, tensors, state }
        })?;
    }
    Ok(records)
}
