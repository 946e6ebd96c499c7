//! The trainer's one error type. Bad input is permanent (exit code 2, the operator does not
//! retry); everything else may succeed on a retry.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("stage {stage} failed with exit code {code}")]
    Stage { stage: String, code: i32 },
    #[error("distributed: {0}")]
    Distributed(String),
    /// A remote reward service failed (after its retries).
    #[error("reward service {0}")]
    Reward(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Exit code for the process (docs/ARCHITECTURE.md#exit-codes: 2 = permanent, do not retry).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Stage { code, .. } => u8::try_from(*code).unwrap_or(1),
            Error::Read { .. } | Error::Parse { .. } | Error::Invalid { .. } => 2,
            Error::Write { .. } | Error::Torch(_) | Error::Distributed(_) | Error::Reward(_) => 1,
        }
    }

    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn parse(path: &std::path::Path, e: &serde_json::Error) -> Self {
        Error::Parse {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
