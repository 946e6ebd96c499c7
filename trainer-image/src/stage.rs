//! Runs one stage from its [`TrainerConfig`]: builds each model from its source (the base model,
//! an earlier stage's output, or a folder), trains, and writes the final model as a Hugging Face
//! folder (`<output>/model`) and one JSON line of metrics per step (`<output>/metrics.jsonl`).
use std::io::Write;
use std::path::{Path, PathBuf};

use rlhf_spec::{BaseWeights, StageKind, TrainerConfig, WeightsSource};
use tch::{Device, nn};

use crate::algorithms::{dpo, ppo, rm, sft};
use crate::data;
use crate::error::{Error, Result};
use crate::models::heads::ScalarHead;
use crate::models::{CausalLm, load_causal_lm, random_causal_lm};
use crate::tokenizer::Tokenizer;

pub const MODEL_DIR: &str = "model";
pub const METRICS_LOG: &str = "metrics.jsonl";

/// Where a source's weights are, or None for the base model's random initialisation.
fn weights_dir(cfg: &TrainerConfig, source: &WeightsSource) -> Result<Option<PathBuf>> {
    Ok(match source {
        WeightsSource::Base => match &cfg.model.weights {
            BaseWeights::Path(p) => Some(PathBuf::from(p)),
            BaseWeights::Random(_) => None,
        },
        WeightsSource::Path(p) => Some(PathBuf::from(p)),
        WeightsSource::Stage(name) => {
            let dir = cfg.stage_outputs.get(name).ok_or_else(|| Error::invalid("<config>", format!("no output folder for stage {name:?}")))?;
            Some(Path::new(dir).join(MODEL_DIR))
        }
    })
}

fn load_lm(cfg: &TrainerConfig, source: &WeightsSource, device: Device) -> Result<(nn::VarStore, Box<dyn CausalLm>)> {
    match (weights_dir(cfg, source)?, &cfg.model.weights) {
        (Some(dir), _) => load_causal_lm(&dir, device),
        (None, BaseWeights::Random(arch)) => {
            tch::manual_seed(cfg.stage.training.seed as i64);
            let vs = nn::VarStore::new(device);
            let lm = random_causal_lm(cfg.model.family, arch, &vs)?;
            Ok((vs, lm))
        }
        (None, BaseWeights::Path(_)) => unreachable!("a base path always has a folder"),
    }
}

fn load_head(cfg: &TrainerConfig, source: &WeightsSource, device: Device) -> Result<(nn::VarStore, ScalarHead)> {
    match weights_dir(cfg, source)? {
        Some(dir) => ScalarHead::load(&dir, device),
        None => {
            let (vs, lm) = load_lm(cfg, source, device)?;
            let head = ScalarHead::attach(&vs, lm);
            Ok((vs, head))
        }
    }
}

/// The frozen role of a source (reference, reward model).
fn frozen<T>(loaded: (nn::VarStore, T)) -> (nn::VarStore, T) {
    let (mut vs, model) = loaded;
    vs.freeze();
    (vs, model)
}

/// Appends one JSON object per line to `<output>/metrics.jsonl` and echoes it as progress.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(METRICS_LOG);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|source| Error::Write { path: path.clone(), source })?;
        Ok(Self { file, path })
    }

    fn write(&mut self, stage: &str, record: serde_json::Value) {
        println!("{stage}: {record}");
        if let Err(e) = writeln!(self.file, "{record}") {
            eprintln!("rlhf-trainer: cannot append to {}: {e}", self.path.display()); // metrics are best effort
        }
    }
}

fn check_tokenizer(tok: &Tokenizer, lm: &dyn CausalLm, origin: &Path) -> Result<()> {
    tok.check_fits(lm.hf_config()["vocab_size"].as_i64().unwrap_or(i64::MAX), origin)
}

/// Runs the stage described by `cfg` on `device`.
pub fn run(cfg: &TrainerConfig, device: Device) -> Result<()> {
    let s = &cfg.stage;
    let out = Path::new(&cfg.output_dir);
    std::fs::create_dir_all(out).map_err(|source| Error::Write { path: out.into(), source })?;
    let tok = Tokenizer::load(&cfg.model.tokenizer)?;
    let examples = data::load(&s.dataset, s.kind)?;
    let mut log = MetricsLog::create(out)?;
    let name = s.name.clone();
    let model_dir = out.join(MODEL_DIR);
    let t = &s.training;
    match s.kind {
        StageKind::Sft => {
            let (vs, lm) = load_lm(cfg, &s.models.init, device)?;
            check_tokenizer(&tok, lm.as_ref(), out)?;
            sft::train(lm.as_ref(), &vs, &tok, &examples, t, device, |step, loss| {
                log.write(&name, serde_json::json!({"step": step, "loss": loss}))
            })?;
            lm.save(&vs, &model_dir)
        }
        StageKind::Rm => {
            let (vs, head) = load_head(cfg, &s.models.init, device)?;
            check_tokenizer(&tok, head.lm.as_ref(), out)?;
            rm::train(&head, &vs, &tok, &examples, t, device, |step, loss, accuracy| {
                log.write(&name, serde_json::json!({"step": step, "loss": loss, "rm_accuracy": accuracy}))
            })?;
            head.save(&vs, &model_dir, i64::from(tok.pad_token_id))
        }
        StageKind::Dpo => {
            let (vs, policy) = load_lm(cfg, &s.models.init, device)?;
            check_tokenizer(&tok, policy.as_ref(), out)?;
            let reference_source = s.models.reference.clone().unwrap_or_else(|| s.models.init.clone());
            let (_ref_vs, reference) = frozen(load_lm(cfg, &reference_source, device)?);
            let params = s.dpo.clone().ok_or_else(|| Error::invalid("<config>", "a dpo stage without dpo settings"))?;
            dpo::train(policy.as_ref(), &vs, reference.as_ref(), &tok, &examples, t, &params, device, |step, loss| {
                log.write(&name, serde_json::json!({"step": step, "loss": loss}))
            })?;
            policy.save(&vs, &model_dir)
        }
        StageKind::Ppo => run_ppo(cfg, &tok, &examples, device, &mut log, &model_dir),
    }
}

fn run_ppo(cfg: &TrainerConfig, tok: &Tokenizer, examples: &[data::Example], device: Device, log: &mut MetricsLog, model_dir: &Path) -> Result<()> {
    let s = &cfg.stage;
    let params = s.ppo.clone().ok_or_else(|| Error::invalid("<config>", "a ppo stage without ppo settings"))?;
    let missing = |role: &str| Error::invalid("<config>", format!("a ppo stage without a {role} source"));
    let (actor_vs, actor) = load_lm(cfg, &s.models.init, device)?;
    check_tokenizer(tok, actor.as_ref(), Path::new(&cfg.output_dir))?;
    let reference_source = s.models.reference.clone().unwrap_or_else(|| s.models.init.clone());
    let (_ref_vs, reference) = frozen(load_lm(cfg, &reference_source, device)?);
    let (_rm_vs, reward) = frozen(load_head(cfg, s.models.reward_model.as_ref().ok_or_else(|| missing("reward model"))?, device)?);
    let (critic_vs, critic) = load_head(cfg, s.models.critic.as_ref().ok_or_else(|| missing("critic"))?, device)?;
    let models = ppo::Models { actor: actor.as_ref(), actor_vs: &actor_vs, critic: &critic, critic_vs: &critic_vs, reference: reference.as_ref(), reward: &reward };
    ppo::train(&models, tok, examples, &s.training, &params, device, |r| {
        log.write(
            &s.name,
            serde_json::json!({"step": r.round, "reward_mean": r.reward_mean, "reward_std": r.reward_std, "kl": r.kl,
                "kl_coef": r.kl_coef, "entropy": r.entropy, "policy_loss": r.policy_loss, "value_loss": r.value_loss,
                "clip_fraction": r.clip_fraction}),
        )
    })?;
    actor.save(&actor_vs, model_dir)?;
    critic.save(&critic_vs, &model_dir.with_file_name("critic"), i64::from(tok.pad_token_id))
}
