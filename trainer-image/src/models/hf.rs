//! Hugging Face model folders: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Weight names are HF names, so nothing is converted.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tch::Tensor;

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads `config.json` of a model folder into `T`.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::parse(&path, &e))
}

/// Every tensor of the folder's weights (all shards), by name.
pub fn read_weights(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for file in weight_files(dir)? {
        let tensors =
            Tensor::read_safetensors(&file).map_err(|e| Error::invalid(&file, e.to_string()))?;
        out.extend(tensors);
    }
    Ok(out)
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Err(Error::invalid(
            dir,
            format!("no {WEIGHTS_FILE} or {INDEX_FILE} in the model folder"),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|source| Error::Read {
        path: index.clone(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| Error::parse(&index, &e))?;
    let mut shards: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// Writes `config` and `tensors` as a Hugging Face folder. Files are written under temporary
/// names and renamed, so a crash never leaves a half-written model that looks complete.
pub fn write_folder(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let weights_tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    // fp32 on disk whatever the training precision (config.json says float32).
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.to_device(tch::Device::Cpu)
                    .to_kind(tch::Kind::Float)
                    .contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&contiguous, &weights_tmp)?;
    let config_tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let text = serde_json::to_string_pretty(config).expect("a JSON value serializes");
    std::fs::write(&config_tmp, text).map_err(|source| Error::Write {
        path: config_tmp.clone(),
        source,
    })?;
    for (tmp, name) in [(weights_tmp, WEIGHTS_FILE), (config_tmp, CONFIG_FILE)] {
        let target = dir.join(name);
        std::fs::rename(&tmp, &target).map_err(|source| Error::Write {
            path: target,
            source,
        })?;
    }
    Ok(())
}

/// Copies `weights` into the variables of `vars` (name -> variable), checking every shape.
pub fn copy_into(
    vars: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let Some(w) = weights.get(name) else {
            return Err(Error::invalid(
                dir,
                format!("weights have no tensor {name:?}"),
            ));
        };
        if w.size() != var.size() {
            return Err(Error::invalid(
                dir,
                format!(
                    "tensor {name:?} has shape {:?}, the config implies {:?}",
                    w.size(),
                    var.size()
                ),
            ));
        }
        tch::no_grad(|| var.shallow_clone().copy_(&w.to_kind(var.kind())));
    }
    Ok(())
}
