//! Hugging Face model folders: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Weight names are HF names, so nothing is converted.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tch::{Kind, Tensor};

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

/// The dtype names of config.json's `torch_dtype` (newer transformers write `dtype`).
const DTYPES: [(&str, Kind); 3] = [
    ("float32", Kind::Float),
    ("bfloat16", Kind::BFloat16),
    ("float16", Kind::Half),
];

/// The dtype a folder's weights are saved in, from its config.json (fp32 when it does not say).
pub fn saved_kind(dir: &Path) -> Result<Kind> {
    let config: serde_json::Value = read_config(dir)?;
    let Some(name) = config["torch_dtype"].as_str().or(config["dtype"].as_str()) else {
        return Ok(Kind::Float);
    };
    DTYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            Error::invalid(
                dir.join(CONFIG_FILE),
                format!("torch_dtype {name:?} is not supported (float32, bfloat16, float16)"),
            )
        })
}

/// config.json's name of `kind` (one of the saved dtypes).
fn dtype_name(kind: Kind) -> &'static str {
    DTYPES
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("float32", |(n, _)| n)
}

/// Writes `config` and `tensors` (cast to `kind`, which config.json's `torch_dtype` then names)
/// as a Hugging Face folder. Files are written under temporary names and renamed, so a crash
/// never leaves a half-written model that looks complete.
pub fn write_folder(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &[(String, Tensor)],
    kind: Kind,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.into(),
        source,
    })?;
    let weights_tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.to_device(tch::Device::Cpu).to_kind(kind).contiguous(),
            )
        })
        .collect();
    let mut config = config.clone();
    config["torch_dtype"] = dtype_name(kind).into();
    Tensor::write_safetensors(&contiguous, &weights_tmp)?;
    let config_tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serializes");
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
