//! A checkpoint's `state.json`: what a training loop needs besides its tensors to continue,
//! versioned so that a trainer never guesses at a layout it does not know. Version 1:
//!
//! ```json
//! {"version": 1, "step": 40}
//! {"version": 1, "step": 3, "ppo": {"rng": 81985529216486895, "kl_coef": 0.1,
//!                                   "actor_steps": 12, "critic_steps": 12}}
//! ```
//!
//! Reading is strict: every field must be there and spelt right, or the error names it.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The layout this trainer writes and reads.
pub const VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Always [`VERSION`]; [`parse`] has checked it before the rest is read.
    version: u64,
    /// Steps done: optimizer steps in SFT, RM and DPO (also their data position: the batch order
    /// is a pure function of the seed), rounds in PPO.
    pub step: u64,
    /// PPO's loop state; absent for the supervised loops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo: Option<PpoState>,
}

/// What a PPO round leaves besides weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoState {
    /// The prompt and ptx sampler's RNG state (its data position).
    pub rng: u64,
    /// The adaptive KL controller's coefficient.
    pub kl_coef: f64,
    /// Optimizer steps of the actor and the critic (several per round).
    pub actor_steps: u64,
    pub critic_steps: u64,
}

impl State {
    /// The state of SFT, RM and DPO after `step` optimizer steps.
    pub fn supervised(step: u64) -> Self {
        Self {
            version: VERSION,
            step,
            ppo: None,
        }
    }

    /// PPO's state after `round` rounds.
    pub fn ppo(round: u64, ppo: PpoState) -> Self {
        Self {
            version: VERSION,
            step: round,
            ppo: Some(ppo),
        }
    }
}

/// Only the version, so that a file of another version is reported as such rather than as odd
/// fields.
#[derive(Deserialize)]
struct Versioned {
    version: u64,
}

/// The state in `bytes`, the contents of `path`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<State> {
    let Versioned { version } =
        serde_json::from_slice(bytes).map_err(|e| Error::parse(path, &e))?;
    if version != VERSION {
        return Err(Error::invalid(
            path,
            format!("unknown state version {version} (this trainer reads version {VERSION})"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::parse(path, &e))
}

/// The JSON of `state`.
pub fn to_json(state: &State) -> Vec<u8> {
    serde_json::to_vec_pretty(state).expect("states serialise: plain numbers")
}
