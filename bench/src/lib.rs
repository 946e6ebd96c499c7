//! What the benchmark binaries share.
pub mod workload;

use serde::Serialize;

/// The machine a benchmark ran on, as its results record it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    #[serde(rename = "memoryGiB")]
    pub memory_gib: f64,
}

/// CPU count and model, total memory: from /proc.
pub fn machine() -> Machine {
    let proc = |file: &str, key: &str| -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_once(':')?.1.trim().to_string())
    };
    let mem_kib: f64 = proc("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        memory_gib: mem_kib / (1024.0 * 1024.0),
    }
}
