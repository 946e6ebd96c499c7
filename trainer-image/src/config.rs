//! Loading the stage config the operator renders into the stage's ConfigMap.
use std::path::{Path, PathBuf};

use rlhf_spec::TrainerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
}

pub fn load(path: &Path) -> Result<TrainerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<TrainerConfig, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })
}

/// One line a person can check: what this process will do.
pub fn summary(c: &TrainerConfig) -> String {
    let s = &c.stage;
    let p = &s.parallelism;
    format!(
        "job {}/{} stage {} ({}): {} nodes x {} GPUs = world {}, {:?}, batch {} = micro {} x world x {} accumulation, output {}",
        c.namespace,
        c.job,
        s.name,
        s.kind.as_str(),
        p.nodes,
        p.gpus_per_node,
        p.world_size(),
        p.strategy,
        s.training.batch_size,
        s.training.micro_batch_size,
        s.training.gradient_accumulation,
        c.output_dir
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let err = parse(Path::new("/etc/rlhf/trainer.json"), "{\n  \"job\": 3\n}").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/rlhf/trainer.json:2:"), "{text}");
        assert!(text.contains("invalid type: integer `3`, expected a string"), "{text}");
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = load(Path::new("/nonexistent/trainer.json")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read /nonexistent/trainer.json:"), "{err}");
    }
}
