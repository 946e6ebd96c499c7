//! What the benchmark binaries share.
pub mod workload;

use serde_json::{Value, json};

/// CPU count and model, total memory: from /proc.
pub fn machine() -> Value {
    let proc = |file: &str, key: &str| -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_once(':')?.1.trim().to_string())
    };
    let mem_kib: f64 = proc("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").parse().ok())
        .unwrap_or(0.0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpuModel": proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        "memoryGiB": mem_kib / (1024.0 * 1024.0),
    })
}
