//! Operator metrics (`rlhf_operator_*`), served on `/metrics`.
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::crd::{JobPhase, RLHFJob, StagePhase};
use crate::error::Result;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub objects_applied: IntCounterVec,
    pub objects_deleted: IntCounterVec,
    pub pods_created: IntCounter,
    pub pods_deleted: IntCounter,
    /// Jobs the operator watches, by phase.
    pub jobs: IntGaugeVec,
    /// Stages whose gang waits for GPUs.
    pub gangs_queued: IntGauge,
    /// Time gangs spent Queued before admission.
    pub admission_wait: Histogram,
    /// Whole-gang restarts, by job and stage.
    pub gang_restarts: IntCounterVec,
    /// 1 while this replica holds the leader Lease (or leader election is off), else 0.
    pub is_leader: IntGauge,
}

/// Every job phase, so each has a series (at 0 when no job is in it).
const JOB_PHASES: [JobPhase; 7] = [
    JobPhase::Pending,
    JobPhase::Queued,
    JobPhase::Running,
    JobPhase::Restarting,
    JobPhase::Succeeded,
    JobPhase::Failed,
    JobPhase::Suspended,
];

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let reconciles = counter_vec(
            "rlhf_operator_reconciles_total",
            "Reconciles run",
            &["result"],
        )?;
        let reconcile_errors = counter_vec(
            "rlhf_operator_reconcile_errors_total",
            "Failed reconciles by category",
            &["category"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "rlhf_operator_reconcile_duration_seconds",
                "Time of one reconcile",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let objects_applied = counter_vec(
            "rlhf_operator_objects_applied_total",
            "Objects created or updated",
            &["kind"],
        )?;
        let objects_deleted = counter_vec(
            "rlhf_operator_objects_deleted_total",
            "Objects deleted",
            &["kind"],
        )?;
        let pods_created =
            IntCounter::new("rlhf_operator_pods_created_total", "Trainer pods created")?;
        let pods_deleted =
            IntCounter::new("rlhf_operator_pods_deleted_total", "Trainer pods deleted")?;
        let jobs = IntGaugeVec::new(
            Opts::new("rlhf_operator_jobs", "RLHFJobs by phase"),
            &["phase"],
        )?;
        let gangs_queued = IntGauge::new(
            "rlhf_operator_gangs_queued",
            "Stages whose gang waits for GPUs",
        )?;
        let admission_wait = Histogram::with_opts(
            HistogramOpts::new(
                "rlhf_operator_admission_wait_seconds",
                "Time a gang spent Queued before it was admitted",
            )
            .buckets(vec![
                0.0, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
            ]),
        )?;
        let gang_restarts = counter_vec(
            "rlhf_operator_gang_restarts_total",
            "Whole-gang restarts",
            &["namespace", "rlhf_job", "stage"],
        )?;
        let is_leader = IntGauge::new(
            "rlhf_operator_is_leader",
            "1 while this replica is the leader that reconciles (always 1 with leader election off)",
        )?;
        let m = Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects_applied,
            objects_deleted,
            pods_created,
            pods_deleted,
            jobs,
            gangs_queued,
            admission_wait,
            gang_restarts,
            is_leader,
        };
        for c in [
            &m.reconciles,
            &m.reconcile_errors,
            &m.objects_applied,
            &m.objects_deleted,
            &m.gang_restarts,
        ] {
            m.registry.register(Box::new(c.clone()))?;
        }
        for c in [&m.pods_created, &m.pods_deleted] {
            m.registry.register(Box::new(c.clone()))?;
        }
        for h in [&m.reconcile_duration, &m.admission_wait] {
            m.registry.register(Box::new(h.clone()))?;
        }
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.gangs_queued.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        // Series at 0 from the start: "no errors" is data, not a missing series.
        for category in crate::error::CATEGORIES {
            m.reconcile_errors.with_label_values(&[category]);
        }
        for result in ["ok", "error"] {
            m.reconciles.with_label_values(&[result]);
        }
        m.observe_jobs(&[]);
        Ok(m)
    }

    /// Sets the job and queue gauges from the jobs the operator watches now.
    pub fn observe_jobs(&self, jobs: &[&RLHFJob]) {
        let phase = |j: &&RLHFJob| j.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
        for p in JOB_PHASES {
            self.jobs
                .with_label_values(&[&format!("{p:?}")])
                .set(jobs.iter().filter(|j| phase(j) == p).count() as i64);
        }
        let queued = jobs
            .iter()
            .flat_map(|j| j.status.iter().flat_map(|s| s.stages.iter()))
            .filter(|s| s.phase == StagePhase::Queued)
            .count();
        self.gangs_queued.set(queued as i64);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_gauges_count_phases_and_queued_gangs() {
        let job = |phase: &str, stages: serde_json::Value| -> RLHFJob {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "j"},
                "spec": {"image": "i", "model": {"family": "gpt2", "init": "random"}, "stages": []},
                "status": {"phase": phase, "stages": stages}
            }))
            .unwrap()
        };
        let queued = serde_json::json!([{"name": "sft", "kind": "sft", "phase": "Queued"}, {"name": "rm", "kind": "rm", "phase": "Queued"}]);
        let jobs = [
            job("Queued", queued),
            job("Running", serde_json::json!([])),
            job("Running", serde_json::json!([])),
        ];
        let m = Metrics::new().unwrap();
        m.observe_jobs(&jobs.iter().collect::<Vec<_>>());
        let text = m.render();
        assert!(
            text.contains("rlhf_operator_jobs{phase=\"Running\"} 2"),
            "{text}"
        );
        assert!(text.contains("rlhf_operator_jobs{phase=\"Queued\"} 1"));
        assert!(text.contains("rlhf_operator_jobs{phase=\"Failed\"} 0"));
        assert!(text.contains("rlhf_operator_gangs_queued 2"));
        assert!(text.contains("rlhf_operator_reconcile_errors_total{category=\"forbidden\"} 0"));
    }
}
