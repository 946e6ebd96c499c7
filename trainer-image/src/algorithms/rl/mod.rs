//! The RL stage kinds in one loop: each round makes experience with the actor (`groupSize`
//! samples per prompt, each seeded by its position in the round, so the experience does not
//! depend on the world size), scores it with the stage's reward sources, computes advantages with
//! the kind's estimator (PPO: token-level GAE against a critic; GRPO, RLOO, REINFORCE++:
//! group/baseline estimators without a critic; advantages.rs), then learns in optimizer steps of
//! `batchSize` responses (learn.rs). Behaviour log-probs come from the actor's full distribution
//! at the sampling temperature, recomputed after sampling: the top-k/top-p filtered sampling
//! distribution is not the policy being optimised. Rounds checkpoint and resume through
//! [`Progress`].
pub mod advantages;
pub mod experience;
pub mod learn;
pub mod scoring;

use std::collections::BTreeMap;

use tch::{Device, Kind, nn};

use super::losses::{KlController, mean_and_variance};
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
use learn::{LearnSettings, LearnStats, StepShape, learn};
use rlhf_spec::{LossAggregation, ResolvedStage, ResolvedTraining, StageKind};
use scoring::RewardSources;

/// PPO's critic.
#[derive(Clone, Copy)]
pub struct Critic<'a> {
    pub head: &'a ScalarHead,
    pub vs: &'a nn::VarStore,
}

/// The models of an RL stage. The actor (and PPO's critic) train; reference and reward models
/// are frozen.
pub struct Models<'a> {
    pub actor: &'a dyn CausalLm,
    pub actor_vs: &'a nn::VarStore,
    pub critic: Option<Critic<'a>>,
    pub reference: &'a dyn CausalLm,
    pub reference_vs: &'a nn::VarStore,
    pub rewards: &'a RewardSources,
    /// GRPO's dynamic sampling: groups of equal rewards are left out of the loss.
    pub dynamic_sampling: bool,
}

/// How a kind turns rewards into advantages.
#[derive(Clone, Debug, PartialEq)]
pub enum Estimator {
    Gae { gamma: f64, lambda: f64 },
    Group { scale_by_std: bool },
    LeaveOneOut,
    Reinforce,
}

impl Estimator {
    /// The stage's estimator and how its policy loss is aggregated.
    pub fn of(stage: &ResolvedStage) -> (Self, LossAggregation) {
        match (stage.kind, &stage.ppo, &stage.grpo) {
            (StageKind::Ppo, Some(p), _) => (
                Self::Gae {
                    gamma: p.gamma,
                    lambda: p.lambda,
                },
                LossAggregation::TokenMean,
            ),
            (StageKind::Grpo, _, Some(g)) => (
                Self::Group {
                    scale_by_std: g.scale_by_std,
                },
                g.loss_aggregation,
            ),
            (StageKind::Rloo, ..) => (Self::LeaveOneOut, LossAggregation::TokenMean),
            _ => (Self::Reinforce, LossAggregation::TokenMean),
        }
    }
}

/// A prompt and, when the task knows one, its reference answer.
#[derive(Clone, Copy, Debug)]
pub struct PromptRow<'a> {
    pub prompt: &'a str,
    pub reference: Option<&'a str>,
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
        let mut out = self.rewards.model_weights();
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

/// The data of an RL stage: prompts, and prompt/response pairs for the ptx loss (may be empty).
pub struct Data<'a> {
    pub tok: &'a Tokenizer,
    pub prompts: &'a [Example],
    pub ptx: &'a [Example],
}

/// The prompt rows of RL examples (any other shape is an error); with `needs_reference`, every
/// row must have a reference answer.
pub fn prompts_of(examples: &[Example], needs_reference: bool) -> Result<Vec<PromptRow<'_>>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Example::Prompt {
                reference: None, ..
            } if needs_reference => Err(Error::invalid(
                "<dataset>",
                format!(
                    "example {} has no `reference`, which exactAnswer compares with",
                    i + 1
                ),
            )),
            Example::Prompt { prompt, reference } => Ok(PromptRow {
                prompt,
                reference: reference.as_deref(),
            }),
            other => Err(Error::invalid(
                "<dataset>",
                format!("an RL stage needs prompt examples, got {other:?}"),
            )),
        })
        .collect()
}

/// FLOPs (README: the FLOP formula) of making experience: sampling runs the actor forward over
/// every position (2N per position), scoring runs the actor, reference, critic and reward
/// models forward once.
fn experience_flops(m: &Models<'_>, positions: f64) -> f64 {
    let n = |vs: &nn::VarStore| parameter_count(vs) as f64;
    let critic = m.critic.map_or(0.0, |c| n(c.vs));
    let rewards: f64 = m.rewards.model_weights().into_iter().map(n).sum();
    2.0 * positions * (2.0 * n(m.actor_vs) + n(m.reference_vs) + critic + rewards)
}

/// FLOPs of learning: each update epoch runs the actor (and critic) forward and backward (6N),
/// plus the actor on the ptx positions.
fn learn_flops(m: &Models<'_>, positions: f64, epochs: u32, ptx_tokens: f64) -> f64 {
    let n = |vs: &nn::VarStore| parameter_count(vs) as f64;
    let critic = m.critic.map_or(0.0, |c| n(c.vs));
    f64::from(epochs) * 6.0 * positions * (n(m.actor_vs) + critic)
        + 6.0 * ptx_tokens * n(m.actor_vs)
}

/// The round's statistics over all ranks (each rank's sums are added up, then turned into means)
/// and their mean KL, the KL controller's input.
fn round_record(
    round: u64,
    exp: &experience::Experience,
    kl_coef: f64,
    l: &LearnStats,
    has_critic: bool,
    dist: &Dist,
) -> Result<(Record, f64)> {
    let scores = Vec::<f64>::try_from(exp.scores.to_kind(Kind::Double).to_device(Device::Cpu))?;
    let mut local = vec![
        scores.len() as f64,
        scores.iter().sum(),
        scores.iter().map(|s| s * s).sum(),
        exp.row_kl_sum(),
        l.policy_loss,
        l.value_loss,
        l.clip_low,
        l.clip_high,
        l.entropy,
        l.ptx_loss.unwrap_or(0.0),
        exp.lengths.iter().sum::<i64>() as f64,
        exp.ended.iter().filter(|e| **e).count() as f64,
        exp.group_std.len() as f64,
        exp.group_std.iter().sum(),
        exp.groups_dropped as f64,
    ];
    local.extend(exp.sources.iter().map(|(_, v)| v.iter().sum::<f64>()));
    let sums = dist.sum(&local)?;
    let [
        n,
        sum,
        sum_sq,
        kl,
        policy,
        value,
        low,
        high,
        entropy,
        ptx,
        length,
        ended,
        groups,
        group_std,
        dropped,
    ] = <[f64; 15]>::try_from(&sums[..15]).expect("fifteen sums");
    let ranks = dist.world() as f64;
    let (mean, var) = mean_and_variance(sum, sum_sq, n);
    let std = var.sqrt();
    let kl = kl / n;
    let grouped = groups > 0.0;
    let record = Record {
        step: round,
        reward_mean: Some(mean),
        reward_std: Some(std),
        kl: Some(kl),
        kl_coef: Some(kl_coef),
        entropy: Some(entropy / ranks),
        policy_loss: Some(policy),
        value_loss: has_critic.then_some(value),
        clip_fraction: Some((low + high) / ranks),
        clip_fraction_low: Some(low / ranks),
        clip_fraction_high: Some(high / ranks),
        ptx_loss: l.ptx_loss.map(|_| ptx / ranks),
        response_length_tokens: Some(length / n),
        responses_ended_ratio: Some(ended / n),
        group_reward_std: grouped.then(|| group_std / groups),
        groups_dropped_ratio: grouped.then(|| dropped / groups),
        reward_sources: exp
            .sources
            .iter()
            .zip(&sums[15..])
            .map(|((name, _), total)| (name.clone(), total / n))
            .collect::<BTreeMap<_, _>>(),
        ..Record::default()
    };
    Ok((record, kl))
}

/// Seeds of a round's rows: row r of the round (over all ranks) gets the same seed whatever the
/// world size.
fn row_seeds(seed: u64, round: u64, first_row: usize, rows: usize) -> Vec<u64> {
    let round_seed = SplitMix64::derive(seed, round);
    (first_row..first_row + rows)
        .map(|r| SplitMix64::derive(round_seed, r as u64))
        .collect()
}

/// The seed of a round's learning shuffles: from the round's seed, at an index no row reaches.
fn shuffle_seed(seed: u64, round: u64) -> u64 {
    SplitMix64::derive(SplitMix64::derive(seed, round), u64::MAX)
}

/// Runs an RL stage: each round samples `rolloutBatchSize` prompts (each rank makes and learns
/// from its share); rounds continue for `epochs` passes over the prompts or until `maxSteps`
/// rounds. Every round is recorded in `progress`; a restart resumes from the newest checkpoint
/// (weights, optimizer moments, RNG, KL controller). With `offload_inference`, reference and
/// reward models live on the CPU outside experience making.
pub fn train(
    m: &Models<'_>,
    data: &Data<'_>,
    stage: &ResolvedStage,
    device: Device,
    offload_inference: bool,
    progress: &mut Progress,
) -> Result<Vec<Record>> {
    let (cfg, rl) = (
        &stage.training,
        stage.rl.as_ref().expect("an RL stage has rl settings"),
    );
    let prompts = prompts_of(data.prompts, m.rewards.needs_references())?;
    let ptx = super::sft::pairs(data.ptx)?;
    let (rank, world) = (progress.dist().rank(), progress.dist().world());
    let mut actor_opt = Optimizer::new(m.actor_vs, cfg, progress.dist())?;
    let mut critic_opt = match (m.critic, &stage.ppo) {
        (Some(c), Some(ppo)) => {
            let critic_cfg = ResolvedTraining {
                learning_rate: ppo.critic_learning_rate,
                ..cfg.clone()
            };
            Some(Optimizer::new(c.vs, &critic_cfg, progress.dist())?)
        }
        _ => None,
    };
    let rollout = rl.rollout_batch_size as usize;
    let group = rl.group_size as usize;
    if !rollout.is_multiple_of(world) {
        return Err(Error::invalid(
            "<rl.rolloutBatchSize>",
            format!("{rollout} prompts do not split evenly over {world} ranks"),
        ));
    }
    let per_rank = rollout / world;
    let (estimator, aggregation) = Estimator::of(stage);
    let rounds_per_epoch = (prompts.len() / rollout).max(1) as u64;
    let total = cfg
        .max_steps
        .unwrap_or(u64::MAX)
        .min(rounds_per_epoch * u64::from(cfg.epochs));
    let mut kl_ctl = KlController::new(rl.kl_coef, rl.target_kl, 10_000);
    let mut rng = SplitMix64(cfg.seed);
    let mut first = 1;
    if let Some(r) = progress.resume()? {
        let saved = r.ppo()?;
        actor_opt.import("actor", &r.tensors, saved.actor_steps)?;
        if let Some(opt) = &mut critic_opt {
            opt.import("critic", &r.tensors, saved.critic_steps)?;
        }
        rng = SplitMix64(saved.rng);
        kl_ctl.set_value(saved.kl_coef);
        first = r.step() + 1;
    }
    let micro = i64::from(cfg.micro_batch_size);
    let shape = StepShape {
        rows_per_step: i64::from(cfg.batch_size) / world as i64,
        micro,
    };
    let sampling = Sampling {
        tok: data.tok,
        generation: &rl.generation,
        max_length: cfg.max_length,
    };
    let mut records = Vec::new();
    for round in first..=total {
        let clock = PhaseClock::start();
        let picked: Vec<PromptRow<'_>> = (0..rollout)
            .map(|_| prompts[rng.below(prompts.len() as u64) as usize])
            .collect();
        let mine = &picked[rank * per_rank..(rank + 1) * per_rank];
        let seeds = row_seeds(cfg.seed, round, rank * per_rank * group, per_rank * group);
        if offload_inference {
            m.place_inference_models(device);
        }
        let exp = make_experience(
            m,
            mine,
            seeds,
            &sampling,
            rl,
            &estimator,
            kl_ctl.value(),
            device,
            progress.dist(),
        )?;
        if offload_inference {
            m.place_inference_models(Device::Cpu);
        }
        let responses = (rollout * group) as f64;
        let positions = exp.positions() as f64 * world as f64;
        let exp_flops = experience_flops(m, positions);
        let experience_phase = clock.rates(responses, positions, exp_flops);
        let learn_clock = PhaseClock::start();
        // Its own stream per round, as the shuffles of learning have: `rng` only picks prompts.
        let mut ptx_rng = SplitMix64(SplitMix64::derive(!cfg.seed, round));
        let mut ptx_batch = || -> Result<Option<SequenceBatch>> {
            if rl.ptx_coef <= 0.0 || ptx.is_empty() {
                return Ok(None);
            }
            let rows = (0..micro).map(|_| {
                let (p, r) = ptx[ptx_rng.below(ptx.len() as u64) as usize];
                join(data.tok, p, r, cfg.max_length as usize)
            });
            Ok(Some(pad(
                &rows.collect::<Result<Vec<_>>>()?,
                i64::from(data.tok.pad_token_id),
                device,
            )))
        };
        let settings = LearnSettings {
            rl,
            ppo: stage.ppo.as_ref(),
            aggregation,
            shape,
            kl_coef: kl_ctl.value(),
        };
        let stats = learn(
            m,
            &exp,
            (&mut actor_opt, critic_opt.as_mut()),
            &settings,
            shuffle_seed(cfg.seed, round),
            progress.dist(),
            &mut ptx_batch,
        )?;
        let learned = f64::from(rl.update_epochs) * responses;
        let learn_flops = learn_flops(m, positions, rl.update_epochs, stats.ptx_tokens as f64);
        let (mut record, kl) = round_record(
            round,
            &exp,
            kl_ctl.value(),
            &stats,
            m.critic.is_some(),
            progress.dist(),
        )?;
        record.phases = Some(Phases {
            experience: Some(experience_phase),
            learn: Some(learn_clock.rates(learned, learned / responses * positions, learn_flops)),
            train: Some(clock.rates(responses, positions, exp_flops + learn_flops)),
        });
        kl_ctl.update(kl, responses as u64);
        progress.record(record.clone());
        records.push(record);
        progress.step_done(round, round == total, || {
            let mut tensors = Vec::new();
            actor_opt.export("actor", &mut tensors)?;
            if let Some(opt) = &critic_opt {
                opt.export("critic", &mut tensors)?;
            }
            let state = PpoState {
                rng: rng.0,
                kl_coef: kl_ctl.value(),
                actor_steps: actor_opt.steps(),
                critic_steps: critic_opt.as_ref().map_or(0, Optimizer::steps),
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
