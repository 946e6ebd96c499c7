//! (pure) Observed pods + previous status -> new status, the stages whose gang must exist, the
//! pods to delete, and the transitions worth an Event. Stage outcomes are sticky: a Succeeded
//! stage stays Succeeded even after its pods are cleaned up, because the status is the record.
//! Each stage's own lifecycle (restarts, backoff, deadlines) is in `stage_lifecycle.rs`.
mod conditions;
mod plan;
mod stage_lifecycle;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rlhf_spec::{FieldError, stage_output_dir};

use self::conditions::{is_true, set_condition, set_job_conditions, truncate};
pub use self::plan::JobPlan;
pub use self::stage_lifecycle::{
    Cleanup, PERMANENT_ERROR_EXIT_CODE, RESTART_ACTION_PREFIX, backoff,
};
use self::stage_lifecycle::{StageInputs, StageOutcome, advance};
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

pub fn decide_invalid(prev: &RLHFJobStatus, errors: &[FieldError], obs: &Observed<'_>) -> JobPlan {
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
    JobPlan {
        status,
        transitions,
        ..Default::default()
    }
}

/// The stages' new statuses and what they ask for, in pipeline order.
struct StagePass {
    plan: JobPlan,
    stages: Vec<StageStatus>,
    /// "stage X: why" for every stage that failed in this pass.
    failures: Vec<String>,
    /// Stages whose running gang was built from an earlier spec.
    deferred: Vec<String>,
}

pub fn decide(job: &ValidatedJob, prev: &RLHFJobStatus, obs: &Observed<'_>) -> JobPlan {
    let pass = advance_stages(job, prev, obs);
    let mut plan = pass.plan;
    let mut status = RLHFJobStatus {
        conditions: prev.conditions.clone(),
        stages: pass.stages,
        ..Default::default()
    };
    sort_in_spec_order(job, &mut status.stages);
    let phase = job_phase(&status.stages, job.run_policy.suspend);
    status.phase = Some(phase);
    // A failed or suspended job creates no pods, not even the missing ones of a half-made gang.
    if matches!(phase, JobPhase::Failed | JobPhase::Suspended) {
        plan.launch.clear();
    }
    stop_running_pods_of_finished_job(job, phase, obs, &mut plan);
    summarize_job(prev, obs, &mut status);
    plan.wake(job_wake_time(job, &status, obs.now));
    set_job_conditions(prev, &mut status, &pass.failures, &pass.deferred, obs);
    if prev.phase != Some(phase) && matches!(phase, JobPhase::Succeeded | JobPhase::Failed) {
        plan.transitions.push(Transition {
            action: "Job".into(),
            reason: format!("Job{phase:?}"),
            message: format!("job {phase:?}"),
            warning: phase == JobPhase::Failed,
        });
    }
    plan.delete_job = ttl_expired(job, &status, obs.now);
    plan.status = status;
    plan
}

/// Advances every stage in dependency order: a stage may start once all it depends on succeeded
/// in this same pass.
fn advance_stages(job: &ValidatedJob, prev: &RLHFJobStatus, obs: &Observed<'_>) -> StagePass {
    let mut pass = StagePass {
        plan: JobPlan::default(),
        stages: Vec::new(),
        failures: Vec::new(),
        deferred: Vec::new(),
    };
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
        let stale = pods
            .iter()
            .any(|p| !p.deleting && p.spec_hash.as_ref() != obs.desired_hashes.get(name.as_str()));
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
        out.status.kind = stage.resolved.kind;
        let s = &out.status;
        if stale
            && !s.phase.is_finished()
            && !matches!(s.phase, StagePhase::Restarting | StagePhase::Suspended)
        {
            pass.deferred.push(name.clone());
        }
        stamp_stage_times(job, name, obs.now, &mut out.status);
        if out.status.phase.is_finished()
            && job.run_policy.clean_pod_policy == CleanPodPolicy::All
            && !obs.pods.iter().all(|p| &p.stage != name || p.deleting)
        {
            out.cleanup = Some(Cleanup::All);
        }
        pass.failures
            .extend(out.failure.take().map(|why| format!("stage {name}: {why}")));
        phases.insert(name, out.status.phase);
        pass.stages.push(out.status.clone());
        pass.plan.absorb(name, out);
    }
    pass
}

/// Start time and output folder when a stage leaves Waiting; completion time when it finishes.
fn stamp_stage_times(job: &ValidatedJob, name: &str, now: Timestamp, s: &mut StageStatus) {
    if s.phase != StagePhase::Waiting && s.start_time.is_none() {
        s.start_time = Some(Time(now));
        s.output = Some(stage_output_dir(
            &job.mount_path,
            &job.namespace,
            &job.name,
            name,
        ));
    }
    if s.phase.is_finished() && s.completion_time.is_none() {
        s.completion_time = Some(Time(now));
    }
}

/// Keep spec order in status, as users wrote the stages.
fn sort_in_spec_order(job: &ValidatedJob, stages: &mut [StageStatus]) {
    let order: Vec<&str> = job
        .stages
        .iter()
        .map(|s| s.resolved.name.as_str())
        .collect();
    stages.sort_by_key(|s| order.iter().position(|n| *n == s.name));
}

/// cleanPodPolicy Running: when the job finishes, the pods still running are deleted.
fn stop_running_pods_of_finished_job(
    job: &ValidatedJob,
    phase: JobPhase,
    obs: &Observed<'_>,
    plan: &mut JobPlan,
) {
    if !matches!(phase, JobPhase::Succeeded | JobPhase::Failed)
        || job.run_policy.clean_pod_policy != CleanPodPolicy::Running
    {
        return;
    }
    for stage in &job.stages {
        let name = stage.resolved.name.as_str();
        if obs
            .pods
            .iter()
            .any(|p| p.stage == name && p.is_active() && !p.deleting)
        {
            plan.cleanup
                .entry(name.to_string())
                .or_insert(Cleanup::Unfinished);
        }
    }
}

/// The job-level fields that sum up its stages: generation, start and completion times, the
/// running stages and the latest step and reward.
fn summarize_job(prev: &RLHFJobStatus, obs: &Observed<'_>, status: &mut RLHFJobStatus) {
    status.observed_generation = obs.generation;
    status.start_time = prev.start_time.clone().or_else(|| {
        status
            .stages
            .iter()
            .filter_map(|s| s.start_time.clone())
            .min_by_key(|t| t.0)
    });
    status.completion_time = match status.phase {
        Some(JobPhase::Succeeded | JobPhase::Failed) => {
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

#[cfg(test)]
mod tests;
