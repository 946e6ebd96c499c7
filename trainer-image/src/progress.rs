//! What a training loop reports to, checkpoints through and shares work with: each step's record
//! goes to this process's Prometheus gauges and, from the leader (rank 0), to stdout and
//! `<output>/metrics.jsonl`; every `checkpointEvery` steps and at the last step every rank builds
//! the loop's snapshot (a collective under ZeRO) and the leader writes it; on start every rank
//! resumes from the newest good checkpoint. [`Dist`] says who the other ranks are.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{self, Restored, Snapshot};
use crate::cuda_memory;
use crate::distributed::Dist;
use crate::error::{Error, Result};
use crate::metrics::{TrainerMetrics, process_memory};
use crate::record::{DeviceMemory, Rates, Record};

pub const METRICS_LOG: &str = "metrics.jsonl";

pub struct Progress {
    stage: String,
    /// None: print only, keep no log and no checkpoints (library use, tests).
    output: Option<PathBuf>,
    checkpoint_every: u64,
    log: Option<std::fs::File>,
    metrics: Option<Arc<TrainerMetrics>>,
    dist: Dist,
}

impl Progress {
    pub fn new(
        stage: &str,
        output: &Path,
        checkpoint_every: u32,
        metrics: Option<Arc<TrainerMetrics>>,
        dist: Dist,
    ) -> Self {
        Self {
            stage: stage.into(),
            output: Some(output.into()),
            checkpoint_every: u64::from(checkpoint_every.max(1)),
            log: None,
            metrics,
            dist,
        }
    }

    /// One process that prints records and writes nothing.
    pub fn detached(stage: &str) -> Self {
        Self {
            stage: stage.into(),
            output: None,
            checkpoint_every: u64::MAX,
            log: None,
            metrics: None,
            dist: Dist::single(),
        }
    }

    pub fn dist(&self) -> &Dist {
        &self.dist
    }

    fn leader(&self) -> bool {
        self.dist.is_leader()
    }

    /// The newest good checkpoint, if any. The metrics log forgets the steps after it (after
    /// step 0 when there is none): they are about to be trained again.
    pub fn resume(&mut self) -> Result<Option<Restored>> {
        let Some(output) = &self.output else {
            return Ok(None);
        };
        let restored = checkpoint::latest(output)?;
        let kept_step = restored.as_ref().map_or(0, Restored::step);
        if !self.leader() {
            return Ok(restored);
        }
        if let Some(r) = &restored {
            println!(
                "{}: resuming from {} (step {})",
                self.stage,
                r.dir.display(),
                r.step()
            );
        }
        let path = output.join(METRICS_LOG);
        let records = self.logged();
        if !records.is_empty() {
            let kept: String = records
                .iter()
                .filter(|r| r.step <= kept_step)
                .map(|r| format!("{}\n", line(r)))
                .collect();
            std::fs::write(&path, kept).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(restored)
    }

    /// The records in the metrics log so far (unreadable lines skipped).
    pub fn logged(&self) -> Vec<Record> {
        let Some(output) = &self.output else {
            return Vec::new();
        };
        read_log(&output.join(METRICS_LOG))
    }

    /// Logs one record, adding this process's memory.
    pub fn record(&mut self, mut record: Record) {
        record.memory = memory();
        if let Some(metrics) = &self.metrics {
            metrics.observe(&record);
        }
        if !self.leader() {
            return;
        }
        println!("{}: {}", self.stage, progress_line(&record));
        if let Err(e) = self.append(&record) {
            eprintln!("rlhf-trainer: {e}"); // the log is best effort; the checkpoint is what counts
        }
    }

    fn append(&mut self, record: &Record) -> Result<()> {
        let Some(output) = &self.output else {
            return Ok(());
        };
        let path = output.join(METRICS_LOG);
        let io = |source| Error::Write {
            path: path.clone(),
            source,
        };
        if self.log.is_none() {
            self.log = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?,
            );
        }
        writeln!(self.log.as_mut().expect("opened above"), "{}", line(record)).map_err(io)
    }

    /// After step `step`: when a checkpoint is due (every `checkpointEvery` steps, and at the
    /// `last` step) every rank builds the snapshot and the leader writes it.
    pub fn step_done(
        &mut self,
        step: u64,
        last: bool,
        snapshot: impl FnOnce() -> Result<Snapshot>,
    ) -> Result<()> {
        let Some(output) = &self.output else {
            return Ok(());
        };
        if step.is_multiple_of(self.checkpoint_every) || last {
            let snap = snapshot()?;
            if self.leader() {
                let dir = checkpoint::save(output, &snap)?;
                println!("{}: checkpoint {}", self.stage, dir.display());
            }
        }
        Ok(())
    }
}

/// A record as one line of the metrics log.
fn line(record: &Record) -> String {
    serde_json::to_string(record).expect("records serialise: plain numbers and strings")
}

/// A record for people: its numbers at 4 significant digits, the train rate and the RSS.
pub fn progress_line(record: &Record) -> String {
    let mut parts = vec![format!("step {}", record.step)];
    parts.extend(
        record
            .values()
            .into_iter()
            .map(|(key, v)| format!("{key} {v:.4}")),
    );
    if let Some(eval) = &record.eval {
        let values: Vec<String> = eval
            .values()
            .into_iter()
            .map(|(key, v)| format!("{key} {v:.4}"))
            .collect();
        parts.push(format!("held-out {}", values.join(" ")));
    }
    if let Some(train) = record.phases.as_ref().and_then(|p| p.train.as_ref()) {
        parts.push(format!("{:.1} samples/s", train.samples_per_second));
    }
    if let Some(rss) = record.memory.get("cpu").and_then(|m| m.rss) {
        parts.push(format!("rss {:.0} MiB", rss / f64::from(1 << 20)));
    }
    parts.join(", ")
}

/// The records of a metrics log (a missing log has none; unreadable lines are skipped).
pub fn read_log(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// This process's memory: `cpu` {rss, peak} and `cuda:<i>` {allocated, peak}, in bytes, for
/// what is known.
fn memory() -> BTreeMap<String, DeviceMemory> {
    let mut m = BTreeMap::new();
    if let Some((rss, peak)) = process_memory() {
        let cpu = DeviceMemory {
            rss: Some(rss),
            peak: Some(peak),
            ..DeviceMemory::default()
        };
        m.insert("cpu".into(), cpu);
    }
    for (device, allocated, peak) in cuda_memory::devices() {
        let cuda = DeviceMemory {
            allocated: Some(allocated),
            peak: Some(peak),
            ..DeviceMemory::default()
        };
        m.insert(format!("cuda:{device}"), cuda);
    }
    m
}

/// Times one phase of a step and turns its work into rates.
pub struct PhaseClock(Instant);

impl PhaseClock {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// The rates of work done since start.
    pub fn rates(&self, samples: f64, tokens: f64, flops: f64) -> Rates {
        let s = self.0.elapsed().as_secs_f64().max(1e-9);
        Rates {
            samples_per_second: samples / s,
            tokens_per_second: tokens / s,
            tflops: flops / s / 1e12,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: serde_json::Value) -> Record {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn progress_lines_are_short() {
        let line = progress_line(&record(
            json!({"step": 3, "loss": 1.234567, "phases": {"train": {"samples_per_second": 12.34, "tokens_per_second": 1.0, "tflops": 0.0}}, "memory": {"cpu": {"rss": 104857600.0}}}),
        ));
        assert_eq!(line, "step 3, loss 1.2346, 12.3 samples/s, rss 100 MiB");
        assert_eq!(
            progress_line(&record(json!({"step": 0, "eval": {"accuracy": 0.5}}))),
            "step 0, held-out accuracy 0.5000"
        );
    }

    #[test]
    fn the_log_skips_lines_that_are_no_records() {
        let dir = std::env::temp_dir().join(format!("rlhf-progress-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(METRICS_LOG);
        // A non-finite value is written as null: no value, the record stays.
        let text = "{\"step\": 1, \"loss\": null}\n{\"step\": 2, \"loss\": \"x\"}\nnot json\n\
                    {\"loss\": 1.0}\n{\"step\": 3, \"loss\": 1.5}\n";
        std::fs::write(&path, text).unwrap();
        let steps: Vec<(u64, Option<f64>)> =
            read_log(&path).iter().map(|r| (r.step, r.loss)).collect();
        assert_eq!(steps, [(1, None), (3, Some(1.5))]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
