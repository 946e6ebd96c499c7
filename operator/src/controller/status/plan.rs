//! What one status decision amounts to: the job's new status, the gangs that should exist, the
//! pods to delete, the Events, and when to decide again. Admission then refines it (`admitted`,
//! `queued`) before anything is written.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::conditions::set_stage_condition;
use super::stage_lifecycle::{Cleanup, StageOutcome};
use super::{COND_QUEUED, Observed, QUEUE_POLL_SECONDS, Transition, job_phase};
use crate::crd::{JobPhase, RLHFJobStatus, StagePhase, StageStatus};

#[derive(Clone, Debug, PartialEq, Default)]
pub struct JobPlan {
    pub status: RLHFJobStatus,
    /// Stages whose gang should exist now (missing pods are created).
    pub launch: Vec<String>,
    /// Stages whose pods must go, and which of them.
    pub cleanup: BTreeMap<String, Cleanup>,
    pub transitions: Vec<Transition>,
    /// Decide again at this time at the latest.
    pub wake_at: Option<Timestamp>,
    /// ttlSecondsAfterFinished has passed: delete the job.
    pub delete_job: bool,
}

impl JobPlan {
    pub(super) fn absorb(&mut self, name: &str, out: StageOutcome) {
        if out.launch {
            self.launch.push(name.to_string());
        }
        if let Some(c) = out.cleanup {
            self.cleanup.insert(name.to_string(), c);
        }
        self.transitions.extend(out.transitions);
        self.wake(out.wake_at);
    }

    pub(super) fn wake(&mut self, at: Option<Timestamp>) {
        self.wake_at = match (self.wake_at, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn stage_mut(&mut self, name: &str) -> Option<&mut StageStatus> {
        self.status.stages.iter_mut().find(|s| s.name == name)
    }

    /// Admission started the stage's gang now; returns how long it waited in the queue.
    pub fn admitted(&mut self, name: &str, now: Timestamp) -> f64 {
        let mut waited = 0.0;
        if let Some(s) = self.stage_mut(name) {
            if s.phase == StagePhase::Queued {
                s.phase = StagePhase::Pending;
                s.message = None;
            }
            if let Some(since) = s.queued_since.take() {
                waited = now.duration_since(since.0).as_secs_f64().max(0.0);
            }
            s.gang_start_time.get_or_insert(Time(now));
        }
        self.refresh_queue(now);
        waited
    }

    /// Admission keeps the stage's gang waiting: it creates nothing and says why.
    pub fn queued(&mut self, name: &str, position: usize, reason: &str, now: Timestamp) {
        self.launch.retain(|s| s != name);
        let Some(s) = self.stage_mut(name) else {
            return;
        };
        let message = format!("position {position} in the gang queue: {reason}");
        let newly = s.phase != StagePhase::Queued;
        s.phase = StagePhase::Queued;
        s.message = Some(message.clone());
        s.queued_since.get_or_insert(Time(now));
        if newly {
            self.transitions.push(Transition {
                action: format!("Queue/{name}"),
                reason: "GangQueued".into(),
                message: format!("stage {name}: {message}"),
                warning: false,
            });
        }
        self.wake(
            now.saturating_add(SignedDuration::from_secs(QUEUE_POLL_SECONDS))
                .ok(),
        );
        self.refresh_queue(now);
    }

    /// The job phase and Queued condition after admission changed stage phases.
    fn refresh_queue(&mut self, now: Timestamp) {
        if matches!(
            self.status.phase,
            Some(JobPhase::Queued | JobPhase::Pending)
        ) {
            self.status.phase = Some(job_phase(&self.status.stages, false));
        }
        let (generation, no_pods, no_hashes, no_progress, no_nodes) = (
            self.status.observed_generation,
            [],
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeSet::new(),
        );
        let obs = Observed {
            generation,
            pods: &no_pods,
            desired_hashes: &no_hashes,
            progress: &no_progress,
            not_ready_nodes: &no_nodes,
            now,
        };
        set_stage_condition(
            &mut self.status,
            COND_QUEUED,
            StagePhase::Queued,
            "WaitingForGpus",
            &obs,
        );
    }
}
