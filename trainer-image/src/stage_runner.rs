//! Runs one stage from its [`TrainerConfig`]: builds each model from its source (the base model,
//! an earlier stage's output, or a folder), evaluates on the held-out examples, trains (through
//! [`Progress`]: metrics log, Prometheus, checkpoints, resume), evaluates again and writes the
//! final model as a Hugging Face folder (`<output>/model`; PPO's critic in `<output>/critic`)
//! and, from the metrics log, a picture of the training curves (`<output>/curves.svg`).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rlhf_spec::{
    BaseWeights, Dtype, Offload, ResolvedRl, ResolvedTokenizer, RewardSource, StageKind,
    TrainerConfig, WeightsSource,
};
use tch::{Device, Kind, nn};

use crate::algorithms::rl::scoring::{RewardSources, Scorer, Source};
use crate::algorithms::{dpo, rl, rm, sft};
use crate::curves;
use crate::data::{self, Example};
use crate::distributed::Dist;
use crate::error::{Error, Result};
use crate::metrics::TrainerMetrics;
use crate::models::heads::{SCORE, ScalarHead};
use crate::models::lora::{self, WithoutAdapters};
use crate::models::{
    CausalLm, check_family, hf, load_causal_lm, parameter_count, random_causal_lm,
};
use crate::precision;
use crate::progress::Progress;
use crate::record::{Evaluation, Record};
use crate::rewards::{FormatReward, HttpReward};
use crate::tokenizer::chat::ChatTemplate;
use crate::tokenizer::{Tokenizer, folder_files};

pub const MODEL_DIR: &str = "model";
pub const CRITIC_DIR: &str = "critic";

/// Where a source's weights are, or None for the base model's random initialisation.
fn weights_dir(cfg: &TrainerConfig, source: &WeightsSource) -> Result<Option<PathBuf>> {
    Ok(match source {
        WeightsSource::Base => match &cfg.model.weights {
            BaseWeights::Path(p) => {
                // The job's model.family, when named, must be the folder's model_type.
                check_family(Path::new(p), cfg.model.family)?;
                Some(PathBuf::from(p))
            }
            BaseWeights::Random(_) => None,
        },
        WeightsSource::Path(p) => Some(PathBuf::from(p)),
        WeightsSource::Stage(name) => {
            let dir = cfg.stage_outputs.get(name).ok_or_else(|| {
                Error::invalid("<config>", format!("no output folder for stage {name:?}"))
            })?;
            Some(Path::new(dir).join(MODEL_DIR))
        }
    })
}

/// Casts a freshly built model's weights to the stage's compute dtype (`parallelism.precision`).
fn in_compute_dtype<T>(
    cfg: &TrainerConfig,
    device: Device,
    loaded: (nn::VarStore, T),
) -> Result<(nn::VarStore, T)> {
    let (mut vs, model) = loaded;
    vs.set_kind(precision::compute_kind(
        cfg.stage.parallelism.precision,
        device,
    ));
    Ok((vs, model))
}

fn load_lm(
    cfg: &TrainerConfig,
    source: &WeightsSource,
    device: Device,
) -> Result<(nn::VarStore, Box<dyn CausalLm>)> {
    let loaded = match (weights_dir(cfg, source)?, &cfg.model.weights) {
        (Some(dir), _) => load_causal_lm(&dir, device)?,
        (None, BaseWeights::Random(arch)) => {
            tch::manual_seed(cfg.stage.training.seed as i64);
            let vs = nn::VarStore::new(device);
            let family = cfg
                .model
                .family
                .ok_or_else(|| Error::invalid("<model.family>", "init: random needs a family"))?;
            let lm = random_causal_lm(family, arch, &vs)?;
            (vs, lm)
        }
        (None, BaseWeights::Path(_)) => unreachable!("a base path always has a folder"),
    };
    in_compute_dtype(cfg, device, loaded)
}

fn load_head(
    cfg: &TrainerConfig,
    source: &WeightsSource,
    device: Device,
) -> Result<(nn::VarStore, ScalarHead)> {
    let loaded = match weights_dir(cfg, source)? {
        Some(dir) => ScalarHead::load(&dir, device)?,
        None => {
            let (vs, lm) = load_lm(cfg, source, device)?;
            let head = ScalarHead::attach(&vs, lm);
            (vs, head)
        }
    };
    in_compute_dtype(cfg, device, loaded)
}

/// The frozen role of a source (reference, reward model).
fn frozen<T>(loaded: (nn::VarStore, T)) -> (nn::VarStore, T) {
    let (mut vs, model) = loaded;
    vs.freeze();
    (vs, model)
}

/// Prepares a model about to train: activation checkpointing when asked for, and the stage's
/// LoRA adapters (if any), freezing the rest except the variables starting with `keep_trainable`.
fn prepare_trainable(
    cfg: &TrainerConfig,
    lm: &dyn CausalLm,
    vs: &nn::VarStore,
    keep_trainable: &[&str],
) -> Result<()> {
    let p = &cfg.stage.parallelism;
    if p.gradient_checkpointing && p.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
        // Recomputed blocks would draw new dropout masks.
        return Err(Error::invalid(
            "<parallelism.gradientCheckpointing>",
            "cannot be combined with LoRA dropout > 0 yet; set lora.dropout to 0",
        ));
    }
    lm.set_checkpointing(p.gradient_checkpointing);
    if let Some(l) = &p.lora {
        let n = lora::attach(lm, vs, l, keep_trainable)?;
        let trainable: i64 = vs
            .variables()
            .values()
            .filter(|t| t.requires_grad())
            .map(|t| t.numel() as i64)
            .sum();
        println!(
            "{}: LoRA rank {} on {n} projections; {trainable} of {} weights train",
            cfg.stage.name,
            l.rank,
            parameter_count(vs)
        );
    }
    Ok(())
}

/// The reference model of a stage: under LoRA, when it is the trained model's own starting point,
/// that model with its adapters off (no second copy); otherwise loaded and frozen.
fn load_reference(
    cfg: &TrainerConfig,
    device: Device,
) -> Result<Option<(nn::VarStore, Box<dyn CausalLm>)>> {
    let s = &cfg.stage;
    let source = s
        .models
        .reference
        .clone()
        .unwrap_or_else(|| s.models.init.clone());
    if s.parallelism.lora.is_some() && source == s.models.init {
        println!(
            "{}: reference = the trained model with its adapters off (no second copy)",
            s.name
        );
        return Ok(None);
    }
    Ok(Some(frozen(load_lm(cfg, &source, device)?)))
}

/// The reference to use: the loaded one, else the trained model's base (`trained_vs` its weights).
fn reference_view<'a>(
    loaded: &'a Option<(nn::VarStore, Box<dyn CausalLm>)>,
    base: &'a WithoutAdapters<'a>,
    trained_vs: &'a nn::VarStore,
) -> (&'a dyn CausalLm, &'a nn::VarStore) {
    match loaded {
        Some((vs, m)) => (m.as_ref(), vs),
        None => (base, trained_vs),
    }
}

/// The dtype of the folders a stage saves: `model.dtype`, else the base folder's, else fp32.
fn saved_kind(cfg: &TrainerConfig) -> Result<Kind> {
    Ok(match (cfg.model.dtype, &cfg.model.weights) {
        (Some(Dtype::Fp32), _) | (None, BaseWeights::Random(_)) => Kind::Float,
        (Some(Dtype::Bf16), _) => Kind::BFloat16,
        (Some(Dtype::Fp16), _) => Kind::Half,
        (None, BaseWeights::Path(dir)) => hf::saved_kind(Path::new(dir))?,
    })
}

fn check_tokenizer(tok: &Tokenizer, lm: &dyn CausalLm, origin: &Path) -> Result<()> {
    tok.check_fits(
        lm.hf_config()["vocab_size"].as_i64().unwrap_or(i64::MAX),
        origin,
    )
}

/// What every stage kind needs besides its models.
struct StageRun<'a> {
    cfg: &'a TrainerConfig,
    tok: Tokenizer,
    /// The tokenizer folder's chat template, for chat rows.
    chat: Option<ChatTemplate>,
    train: Vec<Example>,
    held_out: Vec<Example>,
    progress: Progress,
    device: Device,
}

impl StageRun<'_> {
    fn out(&self) -> &Path {
        Path::new(&self.cfg.output_dir)
    }

    /// Logs a held-out evaluation: before training (unless an earlier run of this stage did)
    /// and after it, as `{"step", "eval": {...}}` records.
    fn evaluate(&mut self, step: u64, values: Evaluation) {
        self.progress.record(Record::evaluation(step, values));
    }

    /// Only rank 0 evaluates, logs and saves.
    fn leader(&self) -> bool {
        self.progress.dist().is_leader()
    }

    /// Whether the start evaluation is needed: on the leader, unless an earlier run logged it.
    fn evaluate_at_start(&self) -> bool {
        self.leader()
            && !self
                .progress
                .logged()
                .iter()
                .any(|r| r.step == 0 && r.eval.is_some())
    }

    /// The step the log ends at (the last step trained).
    fn last_step(&self) -> u64 {
        self.progress
            .logged()
            .iter()
            .map(|r| r.step)
            .max()
            .unwrap_or(0)
    }

    /// What every stage kind does around its training: the held-out evaluation `eval` before
    /// (when needed) and after `train`, then, on the leader only, `save` into the output folder.
    fn train_between_evaluations(
        &mut self,
        eval: impl Fn(&Self) -> Result<Evaluation>,
        train: impl FnOnce(&mut Self) -> Result<()>,
        save: impl FnOnce(&Path, Kind) -> Result<()>,
    ) -> Result<()> {
        if self.evaluate_at_start() {
            let values = eval(self)?;
            self.evaluate(0, values);
        }
        train(self)?;
        if !self.leader() {
            return Ok(());
        }
        let values = eval(self)?;
        self.evaluate(self.last_step(), values);
        save(self.out(), saved_kind(self.cfg)?)?;
        self.complete_saved_folders()?;
        self.draw_curves();
        Ok(())
    }

    /// Adds the tokenizer files and a generation config to every folder the stage saved.
    fn complete_saved_folders(&self) -> Result<()> {
        let base = match &self.cfg.model.weights {
            BaseWeights::Path(p) => Some(Path::new(p)),
            BaseWeights::Random(_) => None,
        };
        for name in [MODEL_DIR, CRITIC_DIR] {
            let dir = self.out().join(name);
            if dir.is_dir() {
                folder_files::write_into(&dir, &self.cfg.model.tokenizer, &self.tok, base)?;
            }
        }
        Ok(())
    }

    /// Draws the metrics log into `<output>/curves.svg`; a picture that fails is only a warning.
    fn draw_curves(&self) {
        let s = &self.cfg.stage;
        match curves::write(self.out(), &s.name, s.kind) {
            Ok(path) => println!("{}: training curves in {}", s.name, path.display()),
            Err(e) => eprintln!("rlhf-trainer: warning: {}: no training curves: {e}", s.name),
        }
    }
}

/// Runs the stage described by `cfg` on `device` as one rank of `dist`, exporting to `metrics`
/// when given.
pub fn run(
    cfg: &TrainerConfig,
    device: Device,
    metrics: Option<Arc<TrainerMetrics>>,
    dist: Dist,
) -> Result<()> {
    let s = &cfg.stage;
    let out = Path::new(&cfg.output_dir);
    std::fs::create_dir_all(out).map_err(|source| Error::Write {
        path: out.into(),
        source,
    })?;
    let tok = Tokenizer::load(&cfg.model.tokenizer)?;
    let chat = match &cfg.model.tokenizer {
        ResolvedTokenizer::Path(folder) => ChatTemplate::from_folder(Path::new(folder))?,
        ResolvedTokenizer::Builtin(_) => None,
    };
    let dataset = data::load(&s.dataset, s.kind, chat.as_ref())?;
    let tok = if dataset.rendered {
        tok.rendered()
    } else {
        tok
    };
    let (train, held_out) = data::split_held_out(dataset.examples);
    let progress = Progress::new(&s.name, out, s.training.checkpoint_every, metrics, dist);
    let mut run = StageRun {
        cfg,
        tok,
        chat,
        train,
        held_out,
        progress,
        device,
    };
    match s.kind {
        StageKind::Sft => run_sft(&mut run),
        StageKind::Rm => run_rm(&mut run),
        StageKind::Dpo => run_dpo(&mut run),
        StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => {
            run_rl(&mut run)
        }
    }
}

fn run_sft(r: &mut StageRun<'_>) -> Result<()> {
    let t = &r.cfg.stage.training;
    let (vs, lm) = load_lm(r.cfg, &r.cfg.stage.models.init, r.device)?;
    check_tokenizer(&r.tok, lm.as_ref(), r.out())?;
    prepare_trainable(r.cfg, lm.as_ref(), &vs, &[])?;
    r.train_between_evaluations(
        |r| {
            let micro = t.micro_batch_size as usize;
            let loss = sft::held_out_loss(
                lm.as_ref(),
                &r.tok,
                &r.held_out,
                t.max_length,
                micro,
                r.device,
            )?;
            Ok(Evaluation {
                loss: Some(loss),
                ..Evaluation::default()
            })
        },
        |r| {
            sft::train(
                lm.as_ref(),
                &vs,
                &r.tok,
                &r.train,
                t,
                r.device,
                &mut r.progress,
            )
            .map(drop)
        },
        |out, dtype| lm.save(&vs, &out.join(MODEL_DIR), dtype),
    )
}

fn run_rm(r: &mut StageRun<'_>) -> Result<()> {
    let t = &r.cfg.stage.training;
    let (vs, head) = load_head(r.cfg, &r.cfg.stage.models.init, r.device)?;
    check_tokenizer(&r.tok, head.lm.as_ref(), r.out())?;
    prepare_trainable(r.cfg, head.lm.as_ref(), &vs, &[SCORE])?;
    let pad = i64::from(r.tok.pad_token_id);
    r.train_between_evaluations(
        |r| {
            let micro = t.micro_batch_size as usize;
            let accuracy = rm::accuracy(&head, &r.tok, &r.held_out, t.max_length, micro, r.device)?;
            Ok(Evaluation {
                accuracy: Some(accuracy),
                ..Evaluation::default()
            })
        },
        |r| rm::train(&head, &vs, &r.tok, &r.train, t, r.device, &mut r.progress).map(drop),
        |out, dtype| head.save(&vs, &out.join(MODEL_DIR), pad, dtype),
    )
}

fn run_dpo(r: &mut StageRun<'_>) -> Result<()> {
    let s = &r.cfg.stage;
    let params = s
        .dpo
        .clone()
        .ok_or_else(|| Error::invalid("<config>", "a dpo stage without dpo settings"))?;
    let (vs, policy) = load_lm(r.cfg, &s.models.init, r.device)?;
    check_tokenizer(&r.tok, policy.as_ref(), r.out())?;
    prepare_trainable(r.cfg, policy.as_ref(), &vs, &[])?;
    let loaded_reference = load_reference(r.cfg, r.device)?;
    let base = WithoutAdapters(policy.as_ref());
    let (reference, ref_vs) = reference_view(&loaded_reference, &base, &vs);
    r.train_between_evaluations(
        |r| {
            let (margin, win_rate) = dpo::margin(
                policy.as_ref(),
                reference,
                &r.tok,
                &r.held_out,
                s.training.max_length,
                params.beta,
                r.device,
            )?;
            Ok(Evaluation {
                margin: Some(margin),
                win_rate: Some(win_rate),
                ..Evaluation::default()
            })
        },
        |r| {
            dpo::train(
                policy.as_ref(),
                &vs,
                (reference, ref_vs),
                &r.tok,
                &r.train,
                &s.training,
                &params,
                r.device,
                &mut r.progress,
            )
            .map(drop)
        },
        |out, dtype| policy.save(&vs, &out.join(MODEL_DIR), dtype),
    )
}

/// The stage's reward sources, reward models loaded frozen.
fn load_rewards(cfg: &TrainerConfig, rl: &ResolvedRl, device: Device) -> Result<RewardSources> {
    let sources = rl
        .rewards
        .iter()
        .enumerate()
        .map(|(i, reward)| {
            let field = format!("<rewards[{i}]>");
            let scorer = match &reward.source {
                RewardSource::Model(source) => {
                    let (vs, head) = frozen(load_head(cfg, source, device)?);
                    Scorer::Model { head, vs }
                }
                RewardSource::ExactAnswer => Scorer::ExactAnswer,
                RewardSource::Format { pattern } => {
                    Scorer::Format(FormatReward::new(pattern, &format!("{field}.pattern"))?)
                }
                RewardSource::Length { target_tokens } => Scorer::Length {
                    target_tokens: *target_tokens,
                },
                RewardSource::Http {
                    url,
                    timeout_seconds,
                } => Scorer::Http(HttpReward::new(
                    url,
                    *timeout_seconds,
                    &format!("{field}.http.url"),
                )?),
            };
            Ok(Source {
                name: reward.name.clone(),
                weight: reward.weight,
                scorer,
            })
        })
        .collect::<Result<_>>()?;
    Ok(RewardSources {
        sources,
        max_new_tokens: rl.generation.max_new_tokens,
    })
}

fn run_rl(r: &mut StageRun<'_>) -> Result<()> {
    let s = &r.cfg.stage;
    let rl =
        s.rl.clone()
            .ok_or_else(|| Error::invalid("<config>", "an RL stage without rl settings"))?;
    let (actor_vs, actor) = load_lm(r.cfg, &s.models.init, r.device)?;
    check_tokenizer(&r.tok, actor.as_ref(), r.out())?;
    prepare_trainable(r.cfg, actor.as_ref(), &actor_vs, &[])?;
    let loaded_reference = load_reference(r.cfg, r.device)?;
    let base = WithoutAdapters(actor.as_ref());
    let (reference, reference_vs) = reference_view(&loaded_reference, &base, &actor_vs);
    let rewards = load_rewards(r.cfg, &rl, r.device)?;
    let critic = match (&s.ppo, &s.models.critic) {
        (Some(_), Some(source)) => {
            let (vs, head) = load_head(r.cfg, source, r.device)?;
            prepare_trainable(r.cfg, head.lm.as_ref(), &vs, &[SCORE])?;
            Some((vs, head))
        }
        (Some(_), None) => {
            return Err(Error::invalid(
                "<config>",
                "a ppo stage without a critic source",
            ));
        }
        _ => None,
    };
    let models = rl::Models {
        actor: actor.as_ref(),
        actor_vs: &actor_vs,
        critic: critic.as_ref().map(|(vs, head)| rl::Critic { head, vs }),
        reference,
        reference_vs,
        rewards: &rewards,
        dynamic_sampling: s.grpo.as_ref().is_some_and(|g| g.dynamic_sampling),
    };
    let ptx = match &rl.ptx_dataset {
        Some(d) if rl.ptx_coef > 0.0 => data::load(d, StageKind::Sft, r.chat.as_ref())?.examples,
        _ => Vec::new(),
    };
    let offload_inference = matches!(
        s.parallelism.offload,
        Offload::InferenceModels | Offload::All
    );
    let pad = i64::from(r.tok.pad_token_id);
    r.train_between_evaluations(
        |r| {
            let prompts = rl::prompts_of(&r.held_out, rewards.needs_references())?;
            let sampling = rl::experience::Sampling {
                tok: &r.tok,
                generation: &rl.generation,
                max_length: s.training.max_length,
            };
            rl::experience::evaluate(&models, &prompts, &sampling, r.device)
        },
        |r| {
            let data = rl::Data {
                tok: &r.tok,
                prompts: &r.train,
                ptx: &ptx,
            };
            rl::train(
                &models,
                &data,
                s,
                r.device,
                offload_inference,
                &mut r.progress,
            )
            .map(drop)
        },
        |out, dtype| {
            actor.save(&actor_vs, &out.join(MODEL_DIR), dtype)?;
            match &critic {
                Some((vs, head)) => head.save(vs, &out.join(CRITIC_DIR), pad, dtype),
                None => Ok(()),
            }
        },
    )
}
