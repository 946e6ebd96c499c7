//! Resumable checkpoints in `<output>/checkpoints/step-<N>/`: the training state's tensors
//! (weights and optimizer moments, `tensors.safetensors`), the rest of the state as JSON
//! (`state.json`, [`State`]: data position, RNG, controllers) and a manifest listing every file's
//! size and SHA-256, written last. A checkpoint is built in a hidden folder and renamed into
//! place, so a `step-<N>` folder is complete unless the disk lied; the manifest catches that
//! (truncation, corruption), and such a checkpoint is reported and skipped in favour of an older
//! one. An intact checkpoint whose state this trainer cannot read (another version, a missing
//! field) stops the run instead: an older checkpoint, or none, would silently drop training.
mod state;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::{Error, Result};
pub use state::{PpoState, State};

pub const CHECKPOINTS_DIR: &str = "checkpoints";
const TENSORS: &str = "tensors.safetensors";
const STATE: &str = "state.json";
const MANIFEST: &str = "manifest.json";
/// Complete checkpoints kept; older ones are deleted once a newer one is in place.
const KEEP: usize = 2;

/// What a training loop saves: everything needed to continue from its step (`state.step`).
pub struct Snapshot {
    pub tensors: Vec<(String, Tensor)>,
    pub state: State,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Restored {
    pub tensors: HashMap<String, Tensor>,
    pub state: State,
    pub dir: PathBuf,
}

impl Restored {
    /// The steps (PPO: rounds) done when the checkpoint was taken.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// PPO's loop state, an error naming the file when the checkpoint has none (another stage
    /// kind wrote it).
    pub fn ppo(&self) -> Result<&PpoState> {
        self.state.ppo.as_ref().ok_or_else(|| {
            Error::invalid(
                self.dir.join(STATE),
                "missing field `ppo`: not a PPO stage's checkpoint",
            )
        })
    }
}

/// Why a checkpoint folder is not resumed from.
#[derive(Debug)]
enum Unusable {
    /// Damaged or incomplete: an older checkpoint is tried instead.
    Damaged(String),
    /// Intact, but its state is not one this trainer reads.
    Unreadable(Error),
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    step: u64,
    files: HashMap<String, FileEntry>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a `step-<N>` folder name.
fn parse_step(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Write {
        path: path.into(),
        source,
    };
    let mut file = File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes `snap` as `<root>/checkpoints/step-<N>` and deletes all but the newest [`KEEP`].
pub fn save(root: &Path, snap: &Snapshot) -> Result<PathBuf> {
    let parent = root.join(CHECKPOINTS_DIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write { path, source }
    };
    let step = snap.state.step;
    let partial = parent.join(format!(".partial-{}", step_dir_name(step)));
    let _ = std::fs::remove_dir_all(&partial); // left by a process killed while writing
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let tensors_path = partial.join(TENSORS);
    Tensor::write_safetensors(&snap.tensors, &tensors_path)?;
    let tensor_bytes = std::fs::read(&tensors_path).map_err(|source| Error::Read {
        path: tensors_path.clone(),
        source,
    })?;
    File::open(&tensors_path)
        .and_then(|f| f.sync_all())
        .map_err(io(&tensors_path))?;
    let state_bytes = state::to_json(&snap.state);
    write_synced(&partial.join(STATE), &state_bytes)?;
    let files = [(TENSORS, &tensor_bytes), (STATE, &state_bytes)]
        .into_iter()
        .map(|(name, bytes)| {
            (
                name.to_string(),
                FileEntry {
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                },
            )
        })
        .collect();
    let manifest = Manifest { step, files };
    write_synced(
        &partial.join(MANIFEST),
        &serde_json::to_vec_pretty(&manifest).expect("manifests serialise"),
    )?;
    let done = parent.join(step_dir_name(step));
    let _ = std::fs::remove_dir_all(&done); // an older run's checkpoint of the same step
    std::fs::rename(&partial, &done).map_err(io(&done))?;
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io(&parent))?;
    for old in complete_steps(&parent).into_iter().skip(KEEP) {
        let _ = std::fs::remove_dir_all(parent.join(step_dir_name(old)));
    }
    Ok(done)
}

/// Steps of the `step-<N>` folders under `parent`, newest first.
fn complete_steps(parent: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(parent)
        .map(|entries| {
            entries
                .filter_map(|e| parse_step(&e.ok()?.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
}

/// Reads and verifies one checkpoint folder.
fn read(dir: &Path) -> std::result::Result<Restored, Unusable> {
    let verified = verify(dir).map_err(Unusable::Damaged)?;
    let state = state::parse(&dir.join(STATE), &verified.state).map_err(Unusable::Unreadable)?;
    if state.step != verified.step {
        return Err(Unusable::Damaged(format!(
            "{STATE} is at step {}, the manifest at {}",
            state.step, verified.step
        )));
    }
    let tensors = Tensor::read_safetensors(dir.join(TENSORS))
        .map_err(|e| Unusable::Damaged(format!("{TENSORS}: {e}")))?;
    Ok(Restored {
        tensors: tensors.into_iter().collect(),
        state,
        dir: dir.into(),
    })
}

/// A checkpoint folder's manifest step and state bytes, once every file matches the manifest.
struct Verified {
    step: u64,
    state: Vec<u8>,
}

fn verify(dir: &Path) -> std::result::Result<Verified, String> {
    let manifest_bytes =
        std::fs::read(dir.join(MANIFEST)).map_err(|e| format!("no readable {MANIFEST} ({e})"))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| format!("{MANIFEST} is malformed ({e})"))?;
    let mut contents = HashMap::new();
    for (name, entry) in &manifest.files {
        let bytes =
            std::fs::read(dir.join(name)).map_err(|e| format!("{name} is unreadable ({e})"))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(format!(
                "{name} has {} bytes, the manifest says {} (truncated?)",
                bytes.len(),
                entry.bytes
            ));
        }
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(format!(
                "{name} does not match its SHA-256 in the manifest (corrupt)"
            ));
        }
        contents.insert(name.as_str(), bytes);
    }
    let (true, Some(state)) = (contents.contains_key(TENSORS), contents.remove(STATE)) else {
        return Err(format!("the manifest does not list {TENSORS} and {STATE}"));
    };
    Ok(Verified {
        step: manifest.step,
        state,
    })
}

/// The newest checkpoint under `<root>/checkpoints` that verifies; each damaged one is reported
/// on stderr and skipped. An intact one with a state this trainer cannot read is an error.
pub fn latest(root: &Path) -> Result<Option<Restored>> {
    let parent = root.join(CHECKPOINTS_DIR);
    for step in complete_steps(&parent) {
        let dir = parent.join(step_dir_name(step));
        match read(&dir) {
            Ok(restored) => return Ok(Some(restored)),
            Err(Unusable::Unreadable(e)) => return Err(e),
            Err(Unusable::Damaged(reason)) => eprintln!(
                "rlhf-trainer: skipping checkpoint {}: {reason}",
                dir.display()
            ),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
