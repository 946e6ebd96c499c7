//! Loading the stage config the operator renders into the stage's ConfigMap.
use std::path::Path;

use rlhf_spec::TrainerConfig;

use crate::error::{Error, Result};

pub fn load(path: &Path) -> Result<TrainerConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<TrainerConfig> {
    serde_json::from_str(text).map_err(|e| Error::parse(path, &e))
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
        assert!(
            text.contains("invalid type: integer `3`, expected a string"),
            "{text}"
        );
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = load(Path::new("/nonexistent/trainer.json")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/trainer.json:"),
            "{err}"
        );
    }
}
