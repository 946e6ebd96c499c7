//! (pure) Default links between stages, so the InstructGPT shape needs no wiring: a ppo stage
//! without `dependsOn` waits for every sft and rm stage of the job; a dpo, grpo, rloo or
//! reinforce stage for every sft stage and the rm stages its rewards name. An RL or dpo stage
//! that does not name its models starts its actor (and reference) from the one sft stage it
//! depends on, and a ppo stage without rewards takes its reward model (and critic) from the one
//! rm stage. Where there are several candidates nothing is guessed: the spec must say.
use crate::{ModelSource, PipelineSpec, StageKind, StageSpec};

/// The rm stages a stage's rewards name (`models.rewardModel` or `rewards[].model`).
fn named_reward_stages(stage: &StageSpec) -> Vec<String> {
    let shorthand = stage.models.as_ref().and_then(|m| m.reward_model.as_ref());
    let listed = stage.rewards.iter().filter_map(|r| r.model.as_ref());
    shorthand
        .into_iter()
        .chain(listed)
        .filter_map(|m| m.stage.clone())
        .collect()
}

/// `spec` with the default links filled in (the user's spec is not changed).
pub fn with_default_links(spec: &PipelineSpec) -> PipelineSpec {
    let mut linked = spec.clone();
    for stage in &mut linked.stages {
        let upstream: &[StageKind] = match stage.kind {
            StageKind::Ppo => &[StageKind::Sft, StageKind::Rm],
            StageKind::Dpo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => {
                &[StageKind::Sft]
            }
            StageKind::Sft | StageKind::Rm => continue,
        };
        if stage.depends_on.is_empty() {
            let named = named_reward_stages(stage);
            stage.depends_on = spec
                .stages
                .iter()
                .filter(|s| upstream.contains(&s.kind) || named.contains(&s.name))
                .map(|s| s.name.clone())
                .collect();
        }
        let only = |kind: StageKind| only_dependency_of_kind(spec, stage, kind);
        let (sft, rm) = (only(StageKind::Sft), only(StageKind::Rm));
        let models = stage.models.get_or_insert_default();
        if models.init.is_none() {
            models.init = sft.map(from_stage);
        }
        if stage.kind == StageKind::Ppo && models.reward_model.is_none() && stage.rewards.is_empty()
        {
            models.reward_model = rm.map(from_stage);
        }
    }
    linked
}

fn from_stage(name: String) -> ModelSource {
    ModelSource {
        stage: Some(name),
        path: None,
    }
}

/// The name of the single direct dependency of `kind`, if there is exactly one.
fn only_dependency_of_kind(
    spec: &PipelineSpec,
    stage: &StageSpec,
    kind: StageKind,
) -> Option<String> {
    let mut of_kind = stage
        .depends_on
        .iter()
        .filter(|d| spec.stages.iter().any(|s| &s.name == *d && s.kind == kind));
    match (of_kind.next(), of_kind.next()) {
        (Some(one), None) => Some(one.clone()),
        _ => None,
    }
}
