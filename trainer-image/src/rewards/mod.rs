//! Reward sources besides a reward model: built-in verifiers that check a response against the
//! dataset row (functions.rs) and a remote reward service (http.rs). The RL loop combines them
//! with reward models (algorithms/rl/scoring.rs).
pub mod functions;
pub mod http;

pub use functions::{FormatReward, exact_answer, length_penalty};
pub use http::{HttpReward, RewardBatch};
