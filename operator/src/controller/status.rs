//! (pure) Observed pods + previous status -> new status, the stages whose gang must exist, the
//! pods to delete, and the transitions worth an Event. Stage outcomes are sticky: a Succeeded
//! stage stays Succeeded even after its pods are cleaned up, because the status is the record.
//! Each stage's own lifecycle (restarts, backoff, deadlines) is in `stage.rs`.
mod stage;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rlhf_spec::{FieldError, stage_output_dir};

pub use self::stage::{Cleanup, PERMANENT_ERROR_EXIT_CODE, RESTART_ACTION_PREFIX, backoff};
use self::stage::{StageInputs, StageOutcome, advance};
use super::observe::{ObservedPod, TrainerProgress};
use super::validate::ValidatedJob;
use crate::crd::{CleanPodPolicy, JobPhase, RLHFJobStatus, StagePhase, StageStatus};

pub const COND_INVALID_SPEC: &str = "InvalidSpec";
pub const COND_SUCCEEDED: &str = "Succeeded";
pub const COND_FAILED: &str = "Failed";
pub const COND_SPEC_CHANGE_DEFERRED: &str = "SpecChangeDeferred";
pub const COND_QUEUED: &str = "Queued";
pub const COND_RESTARTING: &str = "Restarting";
pub const COND_SUSPENDED: &str = "Suspended";
/// Running stages' trainers are read this often (the bound on the Step/Reward columns' delay).
pub const PROGRESS_POLL_SECONDS: i64 = 5;
/// Queued gangs look for free GPUs this often (besides every node and pod change).
pub const QUEUE_POLL_SECONDS: i64 = 3;

/// Something that changed and deserves an Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Distinguishes events of different stages (the event recorder groups by reason and action).
    pub action: String,
    pub reason: String,
    pub message: String,
    pub warning: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Decision {
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

impl Decision {
    fn absorb(&mut self, name: &str, out: StageOutcome) {
        if out.launch {
            self.launch.push(name.to_string());
        }
        if let Some(c) = out.cleanup {
            self.cleanup.insert(name.to_string(), c);
        }
        self.transitions.extend(out.transitions);
        self.wake(out.wake_at);
    }

    fn wake(&mut self, at: Option<Timestamp>) {
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

/// Inputs that come from the cluster and the clock.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub pods: &'a [ObservedPod],
    /// Spec hash of each stage's gang as the current spec would build it.
    pub desired_hashes: &'a BTreeMap<String, String>,
    /// What each stage's rank 0 reports, for the stages whose trainer could be read.
    pub progress: &'a BTreeMap<String, TrainerProgress>,
    /// Nodes that are not Ready (or no longer exist) among those the job's pods are bound to.
    pub not_ready_nodes: &'a BTreeSet<String>,
    pub now: Timestamp,
}

pub fn decide_invalid(prev: &RLHFJobStatus, errors: &[FieldError], obs: &Observed<'_>) -> Decision {
    let message = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = prev.clone();
    // A job that never started fails; one that has started keeps its phase (running gangs go on,
    // nothing new starts) until the spec is fixed.
    let started = prev.stages.iter().any(|s| s.phase != StagePhase::Waiting);
    if !started {
        status.phase = Some(JobPhase::Failed);
    }
    status.observed_generation = obs.generation;
    let was_invalid = is_true(prev, COND_INVALID_SPEC);
    set_condition(
        &mut status.conditions,
        COND_INVALID_SPEC,
        true,
        "InvalidSpec",
        &message,
        obs,
    );
    let transitions = if was_invalid && prev.conditions == status.conditions {
        Vec::new()
    } else {
        vec![Transition {
            action: "Validate".into(),
            reason: "InvalidSpec".into(),
            message: truncate(&message, 1000),
            warning: true,
        }]
    };
    Decision {
        status,
        transitions,
        ..Default::default()
    }
}

pub fn decide(job: &ValidatedJob, prev: &RLHFJobStatus, obs: &Observed<'_>) -> Decision {
    let mut status = RLHFJobStatus {
        conditions: prev.conditions.clone(),
        ..Default::default()
    };
    let mut decision = Decision::default();
    let mut failures = Vec::new();
    let mut deferred = Vec::new();
    let mut phases: BTreeMap<&str, StagePhase> = BTreeMap::new();
    let job_failed_before = prev.stages.iter().any(|s| s.phase == StagePhase::Failed);
    let deadline_passed = active_deadline_passed(job, prev, obs.now);
    for name in &job.pipeline.order {
        let Some(stage) = job.stage(name) else {
            continue;
        };
        let before = prev
            .stages
            .iter()
            .find(|s| &s.name == name)
            .cloned()
            .unwrap_or_else(|| new_stage(name, stage.resolved.kind));
        let pods: Vec<&ObservedPod> = obs.pods.iter().filter(|p| &p.stage == name).collect();
        let deps_done = stage
            .resolved
            .depends_on
            .iter()
            .all(|d| phases.get(d.as_str()) == Some(&StagePhase::Succeeded));
        let input = StageInputs {
            name,
            pods,
            gang_size: stage.resolved.parallelism.nodes,
            may_start: deps_done && !job_failed_before,
            job_failed: job_failed_before,
            suspend: job.run_policy.suspend,
            policy: &job.run_policy,
            gang_timeout_seconds: job.scheduling.timeout_seconds,
            progress: obs.progress.get(name.as_str()).copied(),
            not_ready_nodes: obs.not_ready_nodes,
            now: obs.now,
        };
        let stale = input
            .pods
            .iter()
            .any(|p| !p.deleting && p.spec_hash.as_ref() != obs.desired_hashes.get(name.as_str()));
        let mut out = advance(&before, input);
        if deadline_passed
            && !out.status.phase.is_finished()
            && out.status.phase != StagePhase::Waiting
        {
            let why = format!(
                "activeDeadlineSeconds ({}s) exceeded",
                job.run_policy.active_deadline_seconds.unwrap_or_default()
            );
            out = deadline_failure(&before, out, name, why);
        }
        let s = &mut out.status;
        s.kind = stage.resolved.kind;
        if stale
            && !s.phase.is_finished()
            && !matches!(s.phase, StagePhase::Restarting | StagePhase::Suspended)
        {
            deferred.push(name.clone());
        }
        if s.phase != StagePhase::Waiting && s.start_time.is_none() {
            s.start_time = Some(Time(obs.now));
            s.output = Some(stage_output_dir(
                &job.mount_path,
                &job.namespace,
                &job.name,
                name,
            ));
        }
        if s.phase.is_finished() && s.completion_time.is_none() {
            s.completion_time = Some(Time(obs.now));
        }
        if s.phase.is_finished()
            && job.run_policy.clean_pod_policy == CleanPodPolicy::All
            && !obs.pods.iter().all(|p| &p.stage != name || p.deleting)
        {
            out.cleanup = Some(Cleanup::All);
        }
        failures.extend(out.failure.take().map(|why| format!("stage {name}: {why}")));
        phases.insert(name, out.status.phase);
        status.stages.push(out.status.clone());
        decision.absorb(name, out);
    }
    // Keep spec order in status, as users wrote the stages.
    let order: Vec<&str> = job
        .stages
        .iter()
        .map(|s| s.resolved.name.as_str())
        .collect();
    status
        .stages
        .sort_by_key(|s| order.iter().position(|n| *n == s.name));

    let phase = job_phase(&status.stages, job.run_policy.suspend);
    status.phase = Some(phase);
    // A failed or suspended job creates no pods, not even the missing ones of a half-made gang.
    if matches!(phase, JobPhase::Failed | JobPhase::Suspended) {
        decision.launch.clear();
    }
    if matches!(phase, JobPhase::Succeeded | JobPhase::Failed)
        && job.run_policy.clean_pod_policy == CleanPodPolicy::Running
    {
        for name in &order {
            if obs
                .pods
                .iter()
                .any(|p| p.stage == *name && p.is_active() && !p.deleting)
            {
                decision
                    .cleanup
                    .entry(name.to_string())
                    .or_insert(Cleanup::Unfinished);
            }
        }
    }
    status.observed_generation = obs.generation;
    status.start_time = prev.start_time.clone().or_else(|| {
        status
            .stages
            .iter()
            .filter_map(|s| s.start_time.clone())
            .min_by_key(|t| t.0)
    });
    status.completion_time = match phase {
        JobPhase::Succeeded | JobPhase::Failed => {
            prev.completion_time.clone().or(Some(Time(obs.now)))
        }
        _ => None,
    };
    let active: Vec<&str> = status
        .stages
        .iter()
        .filter(|s| matches!(s.phase, StagePhase::Pending | StagePhase::Running))
        .map(|s| s.name.as_str())
        .collect();
    status.current_stage = (!active.is_empty()).then(|| active.join(","));
    let reporting = status.stages.iter().rev().find(|s| s.last_step.is_some());
    status.last_step = reporting.and_then(|s| s.last_step);
    status.last_reward = reporting.and_then(|s| s.last_reward);
    decision.wake(job_wake_time(job, &status, obs.now));

    set_condition(
        &mut status.conditions,
        COND_INVALID_SPEC,
        false,
        "SpecValid",
        "",
        obs,
    );
    set_condition(
        &mut status.conditions,
        COND_SUCCEEDED,
        phase == JobPhase::Succeeded,
        "AllStagesSucceeded",
        "every stage succeeded",
        obs,
    );
    let failure_msg = failures.join("; ");
    let failed_msg = if failure_msg.is_empty() {
        condition_message(prev, COND_FAILED)
    } else {
        failure_msg
    };
    set_condition(
        &mut status.conditions,
        COND_FAILED,
        phase == JobPhase::Failed,
        "StageFailed",
        &failed_msg,
        obs,
    );
    let deferred_msg = format!(
        "stage(s) {} run with an earlier spec; the change applies to stages not started yet and to their next gang",
        deferred.join(",")
    );
    set_condition(
        &mut status.conditions,
        COND_SPEC_CHANGE_DEFERRED,
        !deferred.is_empty(),
        "StageAlreadyStarted",
        &deferred_msg,
        obs,
    );
    set_stage_condition(
        &mut status,
        COND_RESTARTING,
        StagePhase::Restarting,
        "GangRestarting",
        obs,
    );
    set_stage_condition(
        &mut status,
        COND_SUSPENDED,
        StagePhase::Suspended,
        "JobSuspended",
        obs,
    );
    if prev.phase != Some(phase) && matches!(phase, JobPhase::Succeeded | JobPhase::Failed) {
        decision.transitions.push(Transition {
            action: "Job".into(),
            reason: format!("Job{phase:?}"),
            message: format!("job {phase:?}"),
            warning: phase == JobPhase::Failed,
        });
    }
    decision.delete_job = ttl_expired(job, &status, obs.now);
    decision.status = status;
    decision
}

fn new_stage(name: &str, kind: rlhf_spec::StageKind) -> StageStatus {
    StageStatus {
        name: name.to_string(),
        kind,
        phase: StagePhase::Waiting,
        restarts: 0,
        start_time: None,
        completion_time: None,
        last_step: None,
        last_reward: None,
        first_reward: None,
        output: None,
        gang_generation: 0,
        gang_start_time: None,
        queued_since: None,
        last_progress_time: None,
        retry_after: None,
        message: None,
    }
}

/// The job has run longer than activeDeadlineSeconds (counted from its first stage's start).
fn active_deadline_passed(job: &ValidatedJob, prev: &RLHFJobStatus, now: Timestamp) -> bool {
    match (
        job.run_policy.active_deadline_seconds,
        prev.start_time.as_ref(),
    ) {
        (Some(limit), Some(start)) => now.duration_since(start.0).as_secs() > limit as i64,
        _ => false,
    }
}

/// A stage still going when the job's deadline passes fails, and its pods are stopped.
fn deadline_failure(
    before: &StageStatus,
    mut out: StageOutcome,
    name: &str,
    why: String,
) -> StageOutcome {
    out.status.phase = StagePhase::Failed;
    out.status.message = Some(why.clone());
    out.launch = false;
    out.cleanup = Some(Cleanup::Unfinished);
    out.transitions
        .retain(|t| t.action != format!("Stage/{name}"));
    if before.phase != StagePhase::Failed {
        out.transitions.push(Transition {
            action: format!("Stage/{name}"),
            reason: "DeadlineExceeded".into(),
            message: format!("stage {name} failed: {why}"),
            warning: true,
        });
    }
    out.failure = Some(why);
    out
}

/// When the job must be looked at again even if nothing in the cluster changes.
fn job_wake_time(job: &ValidatedJob, status: &RLHFJobStatus, now: Timestamp) -> Option<Timestamp> {
    let plus = |t: &Time, secs: u64| {
        t.0.saturating_add(SignedDuration::from_secs(secs as i64 + 1))
            .ok()
    };
    let finished = matches!(status.phase, Some(JobPhase::Succeeded | JobPhase::Failed));
    let deadline = if finished {
        None
    } else {
        job.run_policy
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .and_then(|(d, t)| plus(t, d))
    };
    let ttl = if finished {
        job.run_policy
            .ttl_seconds_after_finished
            .zip(status.completion_time.as_ref())
            .and_then(|(d, t)| plus(t, d))
    } else {
        None
    };
    // Running stages are polled for their trainer's progress; queued ones for free GPUs.
    let poll = |phase: StagePhase, secs: i64| {
        status.stages.iter().any(|s| s.phase == phase).then(|| {
            now.saturating_add(SignedDuration::from_secs(secs))
                .unwrap_or(now)
        })
    };
    [
        deadline,
        ttl,
        poll(StagePhase::Running, PROGRESS_POLL_SECONDS),
        poll(StagePhase::Queued, QUEUE_POLL_SECONDS),
    ]
    .into_iter()
    .flatten()
    .min()
}

fn ttl_expired(job: &ValidatedJob, status: &RLHFJobStatus, now: Timestamp) -> bool {
    let finished = matches!(status.phase, Some(JobPhase::Succeeded | JobPhase::Failed));
    match (
        finished,
        job.run_policy.ttl_seconds_after_finished,
        status.completion_time.as_ref(),
    ) {
        (true, Some(ttl), Some(done)) => now.duration_since(done.0).as_secs() >= ttl as i64,
        _ => false,
    }
}

fn job_phase(stages: &[StageStatus], suspend: bool) -> JobPhase {
    let any = |phase: StagePhase| stages.iter().any(|s| s.phase == phase);
    if any(StagePhase::Failed) {
        JobPhase::Failed
    } else if !stages.is_empty() && stages.iter().all(|s| s.phase == StagePhase::Succeeded) {
        JobPhase::Succeeded
    } else if suspend {
        JobPhase::Suspended
    } else if any(StagePhase::Restarting) {
        JobPhase::Restarting
    } else if any(StagePhase::Running) {
        JobPhase::Running
    } else if any(StagePhase::Queued) && !any(StagePhase::Pending) {
        JobPhase::Queued
    } else {
        JobPhase::Pending
    }
}

/// A job condition that is True while some stage is in `phase`, with those stages' messages.
fn set_stage_condition(
    status: &mut RLHFJobStatus,
    type_: &str,
    phase: StagePhase,
    reason: &str,
    obs: &Observed<'_>,
) {
    let messages: Vec<String> = status
        .stages
        .iter()
        .filter(|s| s.phase == phase)
        .map(|s| format!("stage {}: {}", s.name, s.message.as_deref().unwrap_or("")))
        .collect();
    set_condition(
        &mut status.conditions,
        type_,
        !messages.is_empty(),
        reason,
        &messages.join("; "),
        obs,
    );
}

fn is_true(status: &RLHFJobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn condition_message(status: &RLHFJobStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Sets a condition, keeping lastTransitionTime when the status did not flip. A False condition
/// that never was True is not added (conditions stay short).
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    obs: &Observed<'_>,
) {
    let status = if value { "True" } else { "False" };
    let existing = conds.iter().position(|c| c.type_ == type_);
    if existing.is_none() && !value {
        return;
    }
    // The API server rejects an empty message (k8s-openapi sends it as null), so always say something.
    let (reason, message) = match (value, message.is_empty()) {
        (true, false) => (reason.to_string(), message.to_string()),
        (true, true) => (reason.to_string(), reason.to_string()),
        (false, _) => ("Resolved".to_string(), format!("{type_} no longer applies")),
    };
    let new = |transition: Time| Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.clone(),
        message: truncate(&message, 32 * 1024),
        last_transition_time: transition,
        observed_generation: obs.generation,
    };
    match existing {
        Some(i) if conds[i].status == status => {
            let t = conds[i].last_transition_time.clone();
            conds[i] = new(t);
        }
        Some(i) => conds[i] = new(Time(obs.now)),
        None => conds.push(new(Time(obs.now))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests;
