//! LoRA (Hu et al., 2021): low-rank adapters on a model's projections; everything else frozen.
//! The frozen base is what PPO's reference is ([`WithoutAdapters`]: no second copy of the
//! weights), checkpoints hold only what trains (the optimizer's variables), and saved folders
//! are plain Hugging Face models with the adapters merged in.
use std::collections::BTreeMap;

use tch::{Tensor, nn};

use super::projection::Projection;
use super::{CausalLm, KvCache, common};
use crate::error::{Error, Result};
use rlhf_spec::ResolvedLora;

fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Adds adapters to the projections of `lm` named in `cfg.target_modules` and freezes every
/// other variable of `vs` except those starting with one of `keep_trainable` (a scalar head's
/// `score`). Returns how many projections got an adapter.
pub fn attach(
    lm: &dyn CausalLm,
    vs: &nn::VarStore,
    cfg: &ResolvedLora,
    keep_trainable: &[&str],
) -> Result<usize> {
    let projections = lm.projections();
    let targets: Vec<&&Projection> = projections
        .iter()
        .filter(|p| cfg.target_modules.iter().any(|m| m == p.module()))
        .collect();
    if targets.is_empty() {
        let mut modules: Vec<&str> = projections.iter().map(|p| p.module()).collect();
        modules.dedup();
        return Err(Error::invalid(
            "<parallelism.lora.targetModules>",
            format!(
                "{:?} match no projection of this model (it has {modules:?})",
                cfg.target_modules
            ),
        ));
    }
    for p in &targets {
        p.attach_lora(&vs.root(), i64::from(cfg.rank), cfg.alpha, cfg.dropout);
    }
    for (name, t) in vs.variables() {
        if !is_adapter(&name) && !keep_trainable.iter().any(|k| name.starts_with(k)) {
            let _ = t.set_requires_grad(false);
        }
    }
    Ok(targets.len())
}

/// The variables of `vs` as a plain model: adapters merged into their projections' weights and
/// left out.
pub fn merged_tensors(vs: &nn::VarStore, projections: &[&Projection]) -> Vec<(String, Tensor)> {
    let merged: BTreeMap<String, Tensor> = projections
        .iter()
        .filter_map(|p| p.merged_weight())
        .collect();
    common::named_tensors(vs)
        .into_iter()
        .filter(|(name, _)| !is_adapter(name))
        .map(|(name, t)| match merged.get(&name) {
            Some(m) => (name, m.shallow_clone()),
            None => (name, t),
        })
        .collect()
}

/// A model seen with its adapters switched off: the frozen base (PPO's reference under LoRA).
#[derive(Debug)]
pub struct WithoutAdapters<'a>(pub &'a dyn CausalLm);

impl CausalLm for WithoutAdapters<'_> {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        self.0.set_adapters(false);
        let out = self.0.forward(input_ids, attention_mask, cache);
        self.0.set_adapters(true);
        out
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        self.0.lm_head(hidden)
    }

    fn hf_config(&self) -> serde_json::Value {
        self.0.hf_config()
    }

    fn hidden_size(&self) -> i64 {
        self.0.hidden_size()
    }

    fn projections(&self) -> Vec<&Projection> {
        self.0.projections()
    }

    fn set_checkpointing(&self, on: bool) {
        self.0.set_checkpointing(on);
    }

    fn finish_backward(&self) {
        self.0.finish_backward();
    }
}
