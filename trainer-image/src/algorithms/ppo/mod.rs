//! PPO (InstructGPT recipe): make experience with the actor, score it with the reward model,
//! penalise per-token KL to the reference, estimate advantages with token-level GAE against the
//! critic, then several clipped policy and value updates on that experience (plus the optional
//! pretraining loss). Behaviour log-probs come from the actor's full distribution at the
//! sampling temperature, recomputed after sampling: the top-k/top-p filtered sampling
//! distribution is not the policy being optimised. Rounds checkpoint and resume through
//! [`Progress`].
pub mod experience;
pub mod learn;

use tch::{Device, Kind, nn};

use super::losses::KlController;
use super::optim::Optimizer;
use crate::batch::{SequenceBatch, join, pad};
use crate::checkpoint::{PpoState, Snapshot, State};
use crate::data::Example;
use crate::distributed::Dist;
use crate::error::{Error, Result};
use crate::models::heads::ScalarHead;
use crate::models::{CausalLm, parameter_count};
use crate::progress::{PhaseClock, Progress};
use crate::record::{Phases, Record};
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

/// Moves every variable of `vs` to `device` in place (the models keep their handles).
fn move_to(vs: &nn::VarStore, device: Device) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            if t.device() != device {
                t.set_data(&t.to_device(device));
            }
        }
    });
}

impl Models<'_> {
    /// The frozen inference models' weights that are not also the actor's (under LoRA the
    /// reference is the actor itself).
    fn parked(&self) -> Vec<&nn::VarStore> {
        let mut out = vec![self.reward_vs];
        if !std::ptr::eq(self.reference_vs, self.actor_vs) {
            out.push(self.reference_vs);
        }
        out
    }

    /// `offload: inferenceModels`: reference and reward model wait on the CPU while the actor
    /// and critic learn, and come back to `device` to make experience.
    fn place_inference_models(&self, device: Device) {
        for vs in self.parked() {
            move_to(vs, device);
        }
    }
}

/// The data of a PPO stage: prompts, and prompt/response pairs for the ptx loss (may be empty).
pub struct Data<'a> {
    pub tok: &'a Tokenizer,
    pub prompts: &'a [Example],
    pub ptx: &'a [Example],
}

/// The prompts of PPO examples (any other shape is an error).
pub fn prompts_of(examples: &[Example]) -> Result<Vec<&str>> {
    examples
        .iter()
        .map(|e| match e {
            Example::Prompt { prompt, .. } => Ok(prompt.as_str()),
            other => Err(Error::invalid(
                "<dataset>",
                format!("a ppo stage needs prompt examples, got {other:?}"),
            )),
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
    f64::from(ppo_epochs) * 6.0 * positions * (n(m.actor_vs) + n(m.critic_vs))
        + 6.0 * ptx_tokens * n(m.actor_vs)
}

/// The round's statistics over all ranks (each rank's sums are added up, then turned into means)
/// and their mean KL, the KL controller's input.
fn round_record(
    round: u64,
    exp: &experience::Experience,
    kl_coef: f64,
    l: &LearnStats,
    dist: &Dist,
) -> Result<(Record, f64)> {
    let scores = Vec::<f64>::try_from(exp.scores.to_kind(Kind::Double).to_device(Device::Cpu))?;
    let row_kl = exp.mean_kl() * scores.len() as f64;
    let local = [
        scores.len() as f64,
        scores.iter().sum(),
        scores.iter().map(|s| s * s).sum(),
        row_kl,
        l.policy_loss,
        l.value_loss,
        l.clip_fraction,
        l.entropy,
        l.ptx_loss.unwrap_or(0.0),
    ];
    let [n, sum, sum_sq, kl, policy, value, clip, entropy, ptx] =
        <[f64; 9]>::try_from(dist.sum(&local)?).expect("nine sums");
    let ranks = dist.world() as f64;
    let mean = sum / n;
    let std = ((sum_sq - n * mean * mean) / (n - 1.0).max(1.0))
        .max(0.0)
        .sqrt();
    let kl = kl / n;
    let record = Record {
        step: round,
        reward_mean: Some(mean),
        reward_std: Some(std),
        kl: Some(kl),
        kl_coef: Some(kl_coef),
        entropy: Some(entropy / ranks),
        policy_loss: Some(policy / ranks),
        value_loss: Some(value / ranks),
        clip_fraction: Some(clip / ranks),
        ptx_loss: l.ptx_loss.map(|_| ptx / ranks),
        ..Record::default()
    };
    Ok((record, kl))
}

/// Runs PPO: each round samples `rolloutBatchSize` prompts (with several ranks each rank makes
/// and learns from its share); rounds continue for `epochs` passes over the prompts or until
/// `maxSteps` rounds. Every round is recorded in `progress`; a restart
/// resumes from the newest checkpoint (weights, optimizer moments, RNG, KL controller).
/// With `offload_inference`, reference and reward model live on the CPU outside experience making.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the stage
pub fn train(
    m: &Models<'_>,
    data: &Data<'_>,
    cfg: &ResolvedTraining,
    ppo: &ResolvedPpo,
    device: Device,
    offload_inference: bool,
    progress: &mut Progress,
) -> Result<Vec<Record>> {
    let prompts = prompts_of(data.prompts)?;
    let ptx = super::sft::pairs(data.ptx)?;
    let (rank, world) = (progress.dist().rank(), progress.dist().world());
    let mut actor_opt = Optimizer::new(m.actor_vs, cfg, progress.dist())?;
    let critic_cfg = ResolvedTraining {
        learning_rate: ppo.critic_learning_rate,
        ..cfg.clone()
    };
    let mut critic_opt = Optimizer::new(m.critic_vs, &critic_cfg, progress.dist())?;
    let rollout = ppo.rollout_batch_size as usize;
    if !rollout.is_multiple_of(world) {
        return Err(Error::invalid(
            "<ppo.rolloutBatchSize>",
            format!("{rollout} prompts do not split evenly over {world} ranks"),
        ));
    }
    let per_rank = rollout / world;
    let rounds_per_epoch = (prompts.len() / rollout).max(1) as u64;
    let total = cfg
        .max_steps
        .unwrap_or(u64::MAX)
        .min(rounds_per_epoch * u64::from(cfg.epochs));
    let mut kl_ctl = KlController::new(ppo.kl_coef, ppo.target_kl, 10_000);
    let mut rng = SplitMix64(cfg.seed);
    let mut first = 1;
    if let Some(r) = progress.resume()? {
        let saved = r.ppo()?;
        actor_opt.import("actor", &r.tensors, saved.actor_steps)?;
        critic_opt.import("critic", &r.tensors, saved.critic_steps)?;
        rng = SplitMix64(saved.rng);
        kl_ctl.set_value(saved.kl_coef);
        first = r.step() + 1;
    }
    let micro = i64::from(cfg.micro_batch_size);
    let mut records = Vec::new();
    for round in first..=total {
        let clock = PhaseClock::start();
        let picked: Vec<&str> = (0..rollout)
            .map(|_| prompts[rng.below(prompts.len() as u64) as usize])
            .collect();
        let mine = &picked[rank * per_rank..(rank + 1) * per_rank];
        let seed = (cfg.seed as i64)
            .wrapping_add(round as i64)
            .wrapping_add((rank as i64) << 32);
        let sampling = Sampling {
            tok: data.tok,
            generation: &ppo.generation,
            max_length: cfg.max_length,
            seed,
        };
        if offload_inference {
            m.place_inference_models(device);
        }
        let exp = make_experience(m, mine, &sampling, ppo, kl_ctl.value(), device)?;
        if offload_inference {
            m.place_inference_models(Device::Cpu);
        }
        let positions = exp.positions() as f64 * world as f64;
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
            Ok(Some(pad(
                &rows.collect::<Result<Vec<_>>>()?,
                i64::from(data.tok.pad_token_id),
                device,
            )))
        };
        let stats = learn(
            m,
            &exp,
            (&mut actor_opt, &mut critic_opt),
            ppo,
            micro,
            1.0 / world as f64,
            &mut ptx_batch,
        )?;
        let learned = f64::from(ppo.ppo_epochs) * rollout as f64;
        let learn_flops = learn_flops(m, positions, ppo.ppo_epochs, stats.ptx_tokens as f64);
        let (mut record, kl) = round_record(round, &exp, kl_ctl.value(), &stats, progress.dist())?;
        record.phases = Some(Phases {
            experience: Some(experience_phase),
            learn: Some(learn_clock.rates(
                learned,
                learned / rollout as f64 * positions,
                learn_flops,
            )),
            train: Some(clock.rates(rollout as f64, positions, exp_flops + learn_flops)),
        });
        kl_ctl.update(kl, rollout as u64);
        progress.record(record.clone());
        records.push(record);
        progress.step_done(round, round == total, || {
            let mut tensors = Vec::new();
            actor_opt.export("actor", &mut tensors)?;
            critic_opt.export("critic", &mut tensors)?;
            let state = PpoState {
                rng: rng.0,
                kl_coef: kl_ctl.value(),
                actor_steps: actor_opt.steps(),
                critic_steps: critic_opt.steps(),
            };
            Ok(Snapshot {
                tensors,
                state: State::ppo(round, state),
            })
        })?;
    }
    if offload_inference {
        m.place_inference_models(device); // the held-out evaluation after training uses them
    }
    Ok(records)
}

#[cfg(test)]
mod tests;
