//! Operator metrics (`rlhf_operator_*`), served on `/metrics`.
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};

use crate::error::Result;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub objects_applied: IntCounterVec,
    pub objects_deleted: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(Opts::new("rlhf_operator_reconciles_total", "Reconciles run"), &["result"])?;
        let reconcile_errors =
            IntCounterVec::new(Opts::new("rlhf_operator_reconcile_errors_total", "Failed reconciles by category"), &["category"])?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new("rlhf_operator_reconcile_duration_seconds", "Time of one reconcile")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let objects_applied =
            IntCounterVec::new(Opts::new("rlhf_operator_objects_applied_total", "Objects created or updated"), &["kind"])?;
        let objects_deleted = IntCounterVec::new(Opts::new("rlhf_operator_objects_deleted_total", "Objects deleted"), &["kind"])?;
        for c in [&reconciles, &reconcile_errors, &objects_applied, &objects_deleted] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(reconcile_duration.clone()))?;
        Ok(Self { registry, reconciles, reconcile_errors, reconcile_duration, objects_applied, objects_deleted })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
