//! Per-stage resolution: sources, dataset, hyper-parameters, parallelism.
use std::collections::BTreeMap;

use super::FieldError;
use super::model::lora_modules;
use super::resolve_rl::{resolve_grpo, resolve_ppo, resolve_rl};
use crate::{
    BaseWeights, DatasetFormat, DatasetSpec, DpoParams, LoraSpec, ModelSource, ParallelismSpec,
    PipelineSpec, ResolvedDataset, ResolvedDpo, ResolvedLora, ResolvedModel, ResolvedModels,
    ResolvedParallelism, ResolvedStage, ResolvedTraining, RewardSource, StageKind, StageSpec,
    WeightsSource, dag,
};

pub(super) struct StageContext<'a> {
    pub spec: &'a PipelineSpec,
    pub graph: &'a BTreeMap<&'a str, Vec<&'a str>>,
    pub model: Option<&'a ResolvedModel>,
}

pub(super) fn resolve_stage(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedStage> {
    let before = errors.len();
    let dataset = resolve_dataset(&stage.dataset, &format!("{at}.dataset"), errors);
    let models = resolve_models(ctx, stage, at, errors);
    let parallelism = resolve_parallelism(ctx, stage, at, errors);
    let training = parallelism
        .as_ref()
        .and_then(|p| resolve_training(ctx, stage, p, at, errors));
    let rl = resolve_rl(
        ctx,
        stage,
        parallelism.as_ref(),
        training.as_ref(),
        at,
        errors,
    );
    let ppo = resolve_ppo(stage, training.as_ref(), at, errors);
    let grpo = resolve_grpo(stage, at, errors);
    let dpo = resolve_dpo(stage, at, errors);
    if errors.len() > before {
        return None;
    }
    let mut models = models?;
    if stage.kind == StageKind::Ppo && models.critic.is_none() {
        // The critic defaults to the first reward model, else to the actor's starting weights.
        let first_model = rl
            .iter()
            .flat_map(|r| &r.rewards)
            .find_map(|r| match &r.source {
                RewardSource::Model(w) => Some(w.clone()),
                _ => None,
            });
        models.critic = Some(first_model.unwrap_or_else(|| models.init.clone()));
    }
    Some(ResolvedStage {
        name: stage.name.clone(),
        kind: stage.kind,
        depends_on: stage.depends_on.clone(),
        dataset: dataset?,
        models,
        training: training?,
        rl,
        ppo,
        grpo,
        dpo,
        parallelism: parallelism?,
    })
}

pub(super) fn resolve_dataset(
    spec: &DatasetSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedDataset> {
    match (&spec.path, &spec.synthetic) {
        (Some(path), None) => Some(ResolvedDataset::File {
            path: path.clone(),
            format: spec.format.unwrap_or(if path.ends_with(".parquet") {
                DatasetFormat::Parquet
            } else {
                DatasetFormat::Jsonl
            }),
            fields: spec.fields.clone().unwrap_or_default(),
        }),
        (None, Some(_)) if spec.fields.is_some() => {
            errors.push(FieldError::new(
                format!("{at}.fields"),
                "fields applies to path, not to synthetic",
            ));
            None
        }
        (None, Some(s)) if spec.format.is_none() => Some(ResolvedDataset::Synthetic {
            task: s.task,
            samples: s.samples.unwrap_or(256),
            seed: s.seed.unwrap_or(0),
        }),
        (None, Some(_)) => {
            errors.push(FieldError::new(
                format!("{at}.format"),
                "format applies to path, not to synthetic",
            ));
            None
        }
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                at,
                "set either path or synthetic, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                at,
                "set path (a file in the pod) or synthetic",
            ));
            None
        }
    }
}

/// Which model roles each kind has, and which stage kinds may feed each role.
fn role_rules(kind: StageKind) -> &'static [(&'static str, &'static [StageKind])] {
    const LM: &[StageKind] = &[
        StageKind::Sft,
        StageKind::Ppo,
        StageKind::Dpo,
        StageKind::Grpo,
        StageKind::Rloo,
        StageKind::Reinforce,
    ];
    const ANY: &[StageKind] = &[
        StageKind::Sft,
        StageKind::Rm,
        StageKind::Ppo,
        StageKind::Dpo,
        StageKind::Grpo,
        StageKind::Rloo,
        StageKind::Reinforce,
    ];
    // The reward model is resolved with the stage's rewards (resolve_rl.rs).
    match kind {
        StageKind::Sft => &[("init", LM)],
        StageKind::Rm => &[("init", ANY)],
        StageKind::Ppo => &[
            ("init", LM),
            ("rewardModel", &[]),
            ("critic", ANY),
            ("reference", LM),
        ],
        StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => {
            &[("init", LM), ("rewardModel", &[]), ("reference", LM)]
        }
        StageKind::Dpo => &[("init", LM), ("reference", LM)],
    }
}

fn resolve_models(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedModels> {
    let models = stage.models.clone().unwrap_or_default();
    let given = [
        ("init", &models.init),
        ("rewardModel", &models.reward_model),
        ("critic", &models.critic),
        ("reference", &models.reference),
    ];
    let rules = role_rules(stage.kind);
    let before = errors.len();
    let mut resolved: BTreeMap<&str, WeightsSource> = BTreeMap::new();
    for (role, source) in given {
        let Some(source) = source else { continue };
        if role == "rewardModel" && stage.kind.is_rl() {
            continue;
        }
        let field = format!("{at}.models.{role}");
        match rules.iter().find(|(r, _)| *r == role) {
            None => errors.push(FieldError::new(
                field,
                format!("a {} stage has no {role} model", stage.kind.as_str()),
            )),
            Some((_, kinds)) => {
                if let Some(w) = resolve_source(ctx, stage, source, kinds, &field, errors) {
                    resolved.insert(role, w);
                }
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let init = resolved.remove("init").unwrap_or(WeightsSource::Base);
    let has_reference = stage.kind.is_rl() || stage.kind == StageKind::Dpo;
    Some(ResolvedModels {
        critic: resolved.remove("critic"),
        reference: resolved
            .remove("reference")
            .or_else(|| has_reference.then(|| init.clone())),
        init,
    })
}

pub(super) fn resolve_source(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    source: &ModelSource,
    kinds: &[StageKind],
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<WeightsSource> {
    match (&source.stage, &source.path) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(field, "set either stage or path, not both"))
        }
        (None, Some(path)) => return Some(WeightsSource::Path(path.clone())),
        (None, None) => errors.push(FieldError::new(
            field,
            "set stage (an earlier stage) or path (a folder)",
        )),
        (Some(name), None) => {
            let field = format!("{field}.stage");
            match ctx.spec.stages.iter().find(|s| &s.name == name) {
                None => errors.push(FieldError::new(field, format!("unknown stage {name:?}"))),
                Some(src) if !kinds.contains(&src.kind) => errors.push(FieldError::new(
                    field,
                    format!("stage {name:?} is a {} stage, which cannot provide this model", src.kind.as_str()),
                )),
                Some(_) if !dag::depends_transitively(ctx.graph, &stage.name, name) => errors.push(FieldError::new(
                    field,
                    format!("stage {name:?} must be in dependsOn (directly or through another stage)"),
                )),
                Some(_) => return Some(WeightsSource::Stage(name.clone())),
            }
        }
    }
    None
}

fn merged_parallelism(
    job: Option<&ParallelismSpec>,
    stage: Option<&ParallelismSpec>,
) -> ParallelismSpec {
    let job = job.cloned().unwrap_or_default();
    let stage = stage.cloned().unwrap_or_default();
    ParallelismSpec {
        nodes: stage.nodes.or(job.nodes),
        gpus_per_node: stage.gpus_per_node.or(job.gpus_per_node),
        strategy: stage.strategy.or(job.strategy),
        offload: stage.offload.or(job.offload),
        lora: stage.lora.or(job.lora),
        precision: stage.precision.or(job.precision),
        gradient_checkpointing: stage.gradient_checkpointing.or(job.gradient_checkpointing),
    }
}

fn resolve_parallelism(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedParallelism> {
    let p = merged_parallelism(ctx.spec.parallelism.as_ref(), stage.parallelism.as_ref());
    let nodes = p.nodes.unwrap_or(1);
    let gpus_per_node = p.gpus_per_node.unwrap_or(1);
    let before = errors.len();
    if nodes == 0 {
        errors.push(FieldError::new(
            format!("{at}.parallelism.nodes"),
            "a gang needs at least one node",
        ));
    }
    if gpus_per_node == 0 {
        errors.push(FieldError::new(
            format!("{at}.parallelism.gpusPerNode"),
            "a pod needs at least one GPU",
        ));
    }
    let lora = p
        .lora
        .map(|l| resolve_lora(ctx, &l, &format!("{at}.parallelism.lora"), errors));
    if errors.len() > before {
        return None;
    }
    Some(ResolvedParallelism {
        nodes,
        gpus_per_node,
        strategy: p.strategy.unwrap_or_default(),
        offload: p.offload.unwrap_or_default(),
        lora: lora.flatten(),
        precision: p.precision.unwrap_or_default(),
        gradient_checkpointing: p.gradient_checkpointing.unwrap_or(false),
    })
}

fn resolve_lora(
    ctx: &StageContext<'_>,
    l: &LoraSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedLora> {
    let family = ctx.spec.model.family;
    let known = lora_modules(family);
    let targets = l
        .target_modules
        .clone()
        .unwrap_or_else(|| known.iter().map(|s| s.to_string()).collect());
    if targets.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.targetModules"),
            "name at least one module",
        ));
        return None;
    }
    if let Some((i, bad)) = targets
        .iter()
        .enumerate()
        .find(|(_, t)| !known.contains(&t.as_str()))
    {
        errors.push(FieldError::new(
            format!("{at}.targetModules[{i}]"),
            format!(
                "{bad:?} is not a module of this model family; known: {}",
                known.join(", ")
            ),
        ));
        return None;
    }
    let rank = l.rank.unwrap_or(8);
    Some(ResolvedLora {
        rank,
        alpha: l.alpha.unwrap_or(2.0 * rank as f64),
        dropout: l.dropout.unwrap_or(0.0),
        target_modules: targets,
    })
}

fn default_learning_rate(kind: StageKind) -> f64 {
    match kind {
        StageKind::Sft => 2e-5,
        StageKind::Rm => 1e-5,
        StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => 1e-6,
        StageKind::Dpo => 5e-7,
    }
}

fn resolve_training(
    ctx: &StageContext<'_>,
    stage: &StageSpec,
    p: &ResolvedParallelism,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedTraining> {
    let t = stage.training.clone().unwrap_or_default();
    let at = format!("{at}.training");
    let batch_size = t.batch_size.unwrap_or(32);
    let micro_batch_size = t.micro_batch_size.unwrap_or(8.min(batch_size));
    let per_step = micro_batch_size as u64 * p.world_size() as u64;
    if !(batch_size as u64).is_multiple_of(per_step) {
        errors.push(FieldError::new(
            format!("{at}.batchSize"),
            format!(
                "{batch_size} is not a multiple of microBatchSize {micro_batch_size} x world size {} (= {per_step})",
                p.world_size()
            ),
        ));
        return None;
    }
    let max_length = t.max_length.unwrap_or(512);
    if let Some(BaseWeights::Random(arch)) = ctx.model.map(|m| &m.weights)
        && max_length > arch.max_positions
    {
        errors.push(FieldError::new(
            format!("{at}.maxLength"),
            format!(
                "{max_length} exceeds the model's maxPositions {}",
                arch.max_positions
            ),
        ));
        return None;
    }
    if t.adam_epsilon.is_some_and(|e| e.is_nan() || e <= 0.0) {
        errors.push(FieldError::new(
            format!("{at}.adamEpsilon"),
            "must be above 0",
        ));
    }
    Some(ResolvedTraining {
        learning_rate: t.learning_rate.unwrap_or(default_learning_rate(stage.kind)),
        batch_size,
        micro_batch_size,
        gradient_accumulation: (batch_size as u64 / per_step) as u32,
        epochs: t.epochs.unwrap_or(1),
        max_steps: t.max_steps,
        max_length,
        warmup_steps: t.warmup_steps.unwrap_or(0),
        weight_decay: t.weight_decay.unwrap_or(0.0),
        weight_decay_embeddings: t.weight_decay_embeddings.unwrap_or(false),
        adam_epsilon: t.adam_epsilon.unwrap_or(1e-8), // PyTorch's AdamW default
        max_grad_norm: t.max_grad_norm.unwrap_or(1.0),
        seed: t.seed.unwrap_or(42),
        checkpoint_every: t.checkpoint_every.unwrap_or(50),
    })
}

fn resolve_dpo(stage: &StageSpec, at: &str, errors: &mut Vec<FieldError>) -> Option<ResolvedDpo> {
    if stage.kind != StageKind::Dpo {
        if stage.dpo.is_some() {
            errors.push(FieldError::new(
                format!("{at}.dpo"),
                format!("dpo settings on a {} stage", stage.kind.as_str()),
            ));
        }
        return None;
    }
    let d: DpoParams = stage.dpo.clone().unwrap_or_default();
    Some(ResolvedDpo {
        beta: d.beta.unwrap_or(0.1),
        label_smoothing: d.label_smoothing.unwrap_or(0.0),
    })
}
