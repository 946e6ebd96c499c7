//! The RL kinds' settings: the shared `rl:` block, the reward sources, and the blocks only one
//! kind has (`ppo:`, `grpo:`). Defaults that differ by kind are decided here.
use super::FieldError;
use super::resolve_stage::{StageContext, resolve_dataset, resolve_source};
use crate::{
    GrpoParams, KlEstimator, PpoParams, ResolvedGeneration, ResolvedGrpo, ResolvedParallelism,
    ResolvedPpo, ResolvedReward, ResolvedRl, ResolvedTraining, RewardFunction, RewardSource,
    RewardSpec, RlParams, StageKind, StageSpec,
};

/// Stage kinds that may provide a reward model.
const REWARD_MODEL_KINDS: &[StageKind] = &[StageKind::Rm];

/// Complains about a kind-specific block on a stage of another kind.
fn foreign_block(stage: &StageSpec, block: &str, owner: &str, at: &str, e: &mut Vec<FieldError>) {
    e.push(FieldError::new(
        format!("{at}.{block}"),
        format!(
            "{block} settings on a {} stage (they are {owner} only)",
            stage.kind.as_str()
        ),
    ));
}

pub(super) fn resolve_rl(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    p: Option<&ResolvedParallelism>,
    training: Option<&ResolvedTraining>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedRl> {
    if !stage.kind.is_rl() {
        if stage.rl.is_some() {
            foreign_block(stage, "rl", "ppo, grpo, rloo and reinforce", at, errors);
        }
        if !stage.rewards.is_empty() {
            foreign_block(
                stage,
                "rewards",
                "ppo, grpo, rloo and reinforce",
                at,
                errors,
            );
        }
        return None;
    }
    let rewards = resolve_rewards(ctx, stage, at, errors);
    let (p, training) = (p?, training?);
    let s: RlParams = stage.rl.clone().unwrap_or_default();
    let at = format!("{at}.rl");
    let generation = resolve_generation(&s, training, &at, errors);
    let grouped = matches!(stage.kind, StageKind::Grpo | StageKind::Rloo);
    let group_size = s.group_size.unwrap_or(if grouped { 4 } else { 1 });
    if grouped && group_size < 2 {
        errors.push(FieldError::new(
            format!("{at}.groupSize"),
            format!(
                "a {} stage compares responses within a group: at least 2",
                stage.kind.as_str()
            ),
        ));
    }
    let rollout_batch_size = s
        .rollout_batch_size
        .unwrap_or((training.batch_size / group_size).max(1));
    check_rollout(rollout_batch_size, group_size, p, training, &at, errors);
    if s.target_kl.is_some_and(|t| t <= 0.0) {
        errors.push(FieldError::new(
            format!("{at}.targetKl"),
            "must be above 0 (leave it out for a fixed klCoef)",
        ));
    }
    let clip_range = s.clip_range.unwrap_or(0.2);
    let ptx_coef = s.ptx_coef.unwrap_or(0.0);
    let ptx_dataset = s
        .ptx_dataset
        .as_ref()
        .and_then(|d| resolve_dataset(d, &format!("{at}.ptxDataset"), errors));
    if ptx_coef > 0.0 && s.ptx_dataset.is_none() {
        errors.push(FieldError::new(
            format!("{at}.ptxDataset"),
            "ptxCoef > 0 needs a ptxDataset",
        ));
    }
    let kl_in_reward = s.kl_in_reward.unwrap_or(stage.kind != StageKind::Grpo);
    Some(ResolvedRl {
        kl_coef: s.kl_coef.unwrap_or(0.05),
        kl_estimator: s.kl_estimator.unwrap_or(if kl_in_reward {
            KlEstimator::K1
        } else {
            KlEstimator::K3
        }),
        kl_in_reward,
        target_kl: s.target_kl,
        clip_range,
        clip_range_high: s.clip_range_high.unwrap_or(clip_range),
        update_epochs: s.update_epochs.unwrap_or(1),
        rollout_batch_size,
        group_size,
        reward_clip: s.reward_clip.unwrap_or(10.0),
        entropy_coef: s.entropy_coef.unwrap_or(0.0),
        missing_eos_penalty: s.missing_eos_penalty.unwrap_or(0.0),
        ptx_coef,
        ptx_dataset,
        generation,
        rewards: rewards?,
    })
}

fn resolve_generation(
    s: &RlParams,
    training: &ResolvedTraining,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> ResolvedGeneration {
    let g = s.generation.clone().unwrap_or_default();
    let generation = ResolvedGeneration {
        max_new_tokens: g.max_new_tokens.unwrap_or(64),
        temperature: g.temperature.unwrap_or(1.0),
        top_k: g.top_k.unwrap_or(0),
        top_p: g.top_p.unwrap_or(1.0),
    };
    if generation.max_new_tokens >= training.max_length {
        errors.push(FieldError::new(
            format!("{at}.generation.maxNewTokens"),
            format!(
                "{} leaves no room for the prompt within training.maxLength {}",
                generation.max_new_tokens, training.max_length
            ),
        ));
    }
    generation
}

/// Prompts split evenly over ranks (a group stays on one rank), and a round's responses make
/// whole optimizer steps of `training.batchSize`.
fn check_rollout(
    prompts: u32,
    group_size: u32,
    p: &ResolvedParallelism,
    training: &ResolvedTraining,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let world = p.world_size();
    if !prompts.is_multiple_of(world) {
        errors.push(FieldError::new(
            format!("{at}.rolloutBatchSize"),
            format!("{prompts} is not a multiple of the world size {world}"),
        ));
        return;
    }
    let responses = u64::from(prompts) * u64::from(group_size);
    if !responses.is_multiple_of(u64::from(training.batch_size)) {
        errors.push(FieldError::new(
            format!("{at}.rolloutBatchSize"),
            format!(
                "{prompts} prompts x groupSize {group_size} = {responses} responses per round, \
                 not a multiple of training.batchSize {} (responses per optimizer step)",
                training.batch_size
            ),
        ));
    }
}

/// The stage's reward sources: `rewards`, or the one `models.rewardModel`.
fn resolve_rewards(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<ResolvedReward>> {
    let shorthand = stage.models.as_ref().and_then(|m| m.reward_model.clone());
    let entries: Vec<(String, RewardSpec)> = match (&shorthand, stage.rewards.is_empty()) {
        (Some(_), false) => {
            errors.push(FieldError::new(
                format!("{at}.models.rewardModel"),
                "set either models.rewardModel or rewards (a list that can hold the reward model)",
            ));
            return None;
        }
        (Some(model), true) => vec![(
            format!("{at}.models.rewardModel"),
            RewardSpec {
                model: Some(model.clone()),
                ..RewardSpec::default()
            },
        )],
        (None, true) => {
            errors.push(FieldError::new(
                format!("{at}.rewards"),
                format!(
                    "a {} stage needs a reward: models.rewardModel ({{stage: <an rm stage>}} or \
                     {{path: <folder>}}) or a rewards list",
                    stage.kind.as_str()
                ),
            ));
            return None;
        }
        (None, false) => stage
            .rewards
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("{at}.rewards[{i}]"), r.clone()))
            .collect(),
    };
    let before = errors.len();
    let (mut out, mut bases): (Vec<ResolvedReward>, Vec<String>) = (Vec::new(), Vec::new());
    for (field, entry) in &entries {
        let Some((name, source)) = reward_source(ctx, stage, entry, field, errors) else {
            continue;
        };
        let weight = entry.weight.unwrap_or(1.0);
        if !weight.is_finite() {
            errors.push(FieldError::new(
                format!("{field}.weight"),
                "must be a number",
            ));
        }
        // Labels stay distinct: a second exactAnswer entry is exactAnswer-1.
        let taken = bases.iter().filter(|b| **b == name).count();
        bases.push(name.clone());
        let name = if taken == 0 {
            name
        } else {
            format!("{name}-{taken}")
        };
        out.push(ResolvedReward {
            name,
            weight,
            source,
        });
    }
    (errors.len() == before).then_some(out)
}

/// One entry's source and its metric label.
fn reward_source(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    r: &RewardSpec,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(String, RewardSource)> {
    let set = [r.model.is_some(), r.function.is_some(), r.http.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        errors.push(FieldError::new(
            field,
            "set exactly one of model, function and http",
        ));
        return None;
    }
    let unused = |name: &str, applies: bool, errors: &mut Vec<FieldError>| {
        if !applies {
            errors.push(FieldError::new(
                format!("{field}.{name}"),
                format!("{name} does not apply to this reward"),
            ));
        }
    };
    let function = r.function;
    if r.pattern.is_some() {
        unused("pattern", function == Some(RewardFunction::Format), errors);
    }
    if r.target_tokens.is_some() {
        unused(
            "targetTokens",
            function == Some(RewardFunction::Length),
            errors,
        );
    }
    if let Some(model) = &r.model {
        let field = if field.ends_with("rewardModel") {
            field.to_string()
        } else {
            format!("{field}.model")
        };
        let source = resolve_source(ctx, stage, model, REWARD_MODEL_KINDS, &field, errors)?;
        let name = model.stage.clone().unwrap_or_else(|| "model".into());
        return Some((name, RewardSource::Model(source)));
    }
    if let Some(http) = &r.http {
        let timeout = http.timeout_seconds.unwrap_or(30.0);
        if !http.url.starts_with("http://") {
            errors.push(FieldError::new(
                format!("{field}.http.url"),
                format!(
                    "{:?}: an http:// URL (the trainer speaks plain HTTP)",
                    http.url
                ),
            ));
        }
        if timeout.is_nan() || timeout <= 0.0 {
            errors.push(FieldError::new(
                format!("{field}.http.timeoutSeconds"),
                "must be above 0",
            ));
        }
        let source = RewardSource::Http {
            url: http.url.clone(),
            timeout_seconds: timeout,
        };
        return Some(("http".into(), source));
    }
    let source = match function? {
        RewardFunction::ExactAnswer => RewardSource::ExactAnswer,
        RewardFunction::Length => RewardSource::Length {
            target_tokens: r.target_tokens.unwrap_or(0),
        },
        RewardFunction::Format => match &r.pattern {
            Some(p) if !p.is_empty() => RewardSource::Format { pattern: p.clone() },
            _ => {
                errors.push(FieldError::new(
                    format!("{field}.pattern"),
                    "a format reward needs a pattern (a regular expression)",
                ));
                return None;
            }
        },
    };
    let name = match source {
        RewardSource::ExactAnswer => "exactAnswer",
        RewardSource::Format { .. } => "format",
        _ => "length",
    };
    Some((name.into(), source))
}

pub(super) fn resolve_ppo(
    stage: &StageSpec,
    training: Option<&ResolvedTraining>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedPpo> {
    if stage.kind != StageKind::Ppo {
        if stage.ppo.is_some() {
            foreign_block(stage, "ppo", "ppo", at, errors);
        }
        return None;
    }
    let s: PpoParams = stage.ppo.clone().unwrap_or_default();
    Some(ResolvedPpo {
        value_clip_range: s.value_clip_range.unwrap_or(0.2),
        gamma: s.gamma.unwrap_or(1.0),
        lambda: s.lambda.unwrap_or(0.95),
        critic_learning_rate: s
            .critic_learning_rate
            .unwrap_or(10.0 * training?.learning_rate),
    })
}

pub(super) fn resolve_grpo(
    stage: &StageSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedGrpo> {
    if stage.kind != StageKind::Grpo {
        if stage.grpo.is_some() {
            foreign_block(stage, "grpo", "grpo", at, errors);
        }
        return None;
    }
    let g: GrpoParams = stage.grpo.clone().unwrap_or_default();
    Some(ResolvedGrpo {
        scale_by_std: g.scale_by_std.unwrap_or(true),
        loss_aggregation: g.loss_aggregation.unwrap_or_default(),
        dynamic_sampling: g.dynamic_sampling.unwrap_or(false),
    })
}
