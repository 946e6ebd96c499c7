//! (pure) Observed pods + previous status -> new status, the stages whose gang must exist, and the
//! transitions worth an Event. Stage outcomes are sticky: a Succeeded stage stays Succeeded even
//! after its pods are cleaned up, because the status is the record.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use rlhf_spec::{FieldError, stage_output_dir};

use super::observe::{ObservedPod, PodPhase};
use super::validate::ValidatedJob;
use crate::crd::{JobPhase, RLHFJobStatus, StagePhase, StageStatus};

pub const COND_INVALID_SPEC: &str = "InvalidSpec";
pub const COND_SUCCEEDED: &str = "Succeeded";
pub const COND_FAILED: &str = "Failed";
pub const COND_SPEC_CHANGE_DEFERRED: &str = "SpecChangeDeferred";

/// Something that changed and deserves an Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Distinguishes events of different stages (the event recorder groups by reason and action).
    pub action: String,
    pub reason: String,
    pub message: String,
    pub warning: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: RLHFJobStatus,
    /// Stages whose gang should exist now (missing pods are created).
    pub launch: Vec<String>,
    pub transitions: Vec<Transition>,
}

/// Inputs that come from the cluster and the clock.
pub struct Observed<'a> {
    pub generation: Option<i64>,
    pub pods: &'a [ObservedPod],
    /// Spec hash of each stage's gang as the current spec would build it.
    pub desired_hashes: &'a BTreeMap<String, String>,
    pub now: Timestamp,
}

pub fn decide_invalid(prev: &RLHFJobStatus, errors: &[FieldError], obs: &Observed<'_>) -> Decision {
    let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    let mut status = prev.clone();
    // A job that never started fails; one that has started keeps its phase (running gangs go on,
    // nothing new starts) until the spec is fixed.
    let started = prev.stages.iter().any(|s| s.phase != StagePhase::Waiting);
    if !started {
        status.phase = Some(JobPhase::Failed);
    }
    status.observed_generation = obs.generation;
    let was_invalid = is_true(prev, COND_INVALID_SPEC);
    set_condition(&mut status.conditions, COND_INVALID_SPEC, true, "InvalidSpec", &message, obs);
    let transitions = if was_invalid && prev.conditions == status.conditions {
        Vec::new()
    } else {
        vec![Transition { action: "Validate".into(), reason: "InvalidSpec".into(), message: truncate(&message, 1000), warning: true }]
    };
    Decision { status, launch: Vec::new(), transitions }
}

pub fn decide(job: &ValidatedJob, prev: &RLHFJobStatus, obs: &Observed<'_>) -> Decision {
    let mut status = RLHFJobStatus { conditions: prev.conditions.clone(), ..Default::default() };
    let mut transitions = Vec::new();
    let mut launch = Vec::new();
    let mut failures = Vec::new();
    let mut deferred = Vec::new();
    let mut phases: BTreeMap<&str, StagePhase> = BTreeMap::new();
    let job_failed_before = prev.stages.iter().any(|s| s.phase == StagePhase::Failed);
    for name in &job.pipeline.order {
        let Some(stage) = job.stage(name) else { continue };
        let before = prev.stages.iter().find(|s| &s.name == name);
        let pods: Vec<&ObservedPod> = obs.pods.iter().filter(|p| &p.stage == name && !p.deleting).collect();
        let deps_done = stage.resolved.depends_on.iter().all(|d| phases.get(d.as_str()) == Some(&StagePhase::Succeeded));
        let may_start = deps_done && !job_failed_before && !job.run_policy.suspend;
        let (phase, failure) = stage_phase(before.map(|s| s.phase), &pods, stage.resolved.parallelism.nodes, may_start);
        let desired = obs.desired_hashes.get(name.as_str());
        let stale = pods.iter().any(|p| p.spec_hash.as_ref() != desired);
        if stale && !phase.is_finished() {
            deferred.push(name.clone());
        } else if matches!(phase, StagePhase::Pending | StagePhase::Running) {
            launch.push(name.clone());
        }
        let mut s = before.cloned().unwrap_or_else(|| StageStatus {
            name: name.clone(),
            kind: stage.resolved.kind,
            phase: StagePhase::Waiting,
            restarts: 0,
            start_time: None,
            completion_time: None,
            last_step: None,
            last_reward: None,
            output: None,
        });
        s.kind = stage.resolved.kind;
        if s.phase != phase {
            transitions.push(stage_transition(name, phase, failure.as_ref()));
        }
        failures.extend(failure.map(|why| format!("stage {name}: {why}")));
        s.phase = phase;
        if phase != StagePhase::Waiting && s.start_time.is_none() {
            s.start_time = Some(Time(obs.now));
            s.output = Some(stage_output_dir(&job.mount_path, &job.namespace, &job.name, name));
        }
        if phase.is_finished() && s.completion_time.is_none() {
            s.completion_time = Some(Time(obs.now));
        }
        phases.insert(name, phase);
        status.stages.push(s);
    }
    // Keep spec order in status, as users wrote the stages.
    let order: Vec<&str> = job.stages.iter().map(|s| s.resolved.name.as_str()).collect();
    status.stages.sort_by_key(|s| order.iter().position(|n| *n == s.name));

    let phase = job_phase(&status.stages, job.run_policy.suspend);
    status.phase = Some(phase);
    // A failed or suspended job creates no pods, not even the missing ones of a half-made gang.
    if matches!(phase, JobPhase::Failed | JobPhase::Suspended) {
        launch.clear();
    }
    status.observed_generation = obs.generation;
    status.start_time = prev.start_time.clone().or_else(|| status.stages.iter().filter_map(|s| s.start_time.clone()).min_by_key(|t| t.0));
    status.completion_time = match phase {
        JobPhase::Succeeded | JobPhase::Failed => prev.completion_time.clone().or(Some(Time(obs.now))),
        _ => None,
    };
    let active: Vec<&str> = status.stages.iter().filter(|s| matches!(s.phase, StagePhase::Pending | StagePhase::Running)).map(|s| s.name.as_str()).collect();
    status.current_stage = (!active.is_empty()).then(|| active.join(","));
    let reporting = status.stages.iter().rev().find(|s| s.last_step.is_some());
    status.last_step = reporting.and_then(|s| s.last_step);
    status.last_reward = reporting.and_then(|s| s.last_reward);

    set_condition(&mut status.conditions, COND_INVALID_SPEC, false, "SpecValid", "", obs);
    set_condition(&mut status.conditions, COND_SUCCEEDED, phase == JobPhase::Succeeded, "AllStagesSucceeded", "every stage succeeded", obs);
    let failure_msg = failures.join("; ");
    let failed_msg = if failure_msg.is_empty() { condition_message(prev, COND_FAILED) } else { failure_msg };
    set_condition(&mut status.conditions, COND_FAILED, phase == JobPhase::Failed, "StageFailed", &failed_msg, obs);
    let deferred_msg = format!(
        "stage(s) {} run with an earlier spec; the change applies to stages not started yet and to their next gang",
        deferred.join(",")
    );
    set_condition(&mut status.conditions, COND_SPEC_CHANGE_DEFERRED, !deferred.is_empty(), "StageAlreadyStarted", &deferred_msg, obs);
    if prev.phase != Some(phase) && matches!(phase, JobPhase::Succeeded | JobPhase::Failed) {
        transitions.push(Transition {
            action: "Job".into(),
            reason: format!("Job{phase:?}"),
            message: format!("job {phase:?}"),
            warning: phase == JobPhase::Failed,
        });
    }
    Decision { status, launch, transitions }
}

/// A stage's phase from its previous phase and its live pods; returns a failure description too.
fn stage_phase(prev: Option<StagePhase>, pods: &[&ObservedPod], gang: u32, may_start: bool) -> (StagePhase, Option<String>) {
    if let Some(p) = prev.filter(|p| p.is_finished()) {
        return (p, None);
    }
    let was_running = prev == Some(StagePhase::Running);
    if let Some(failed) = pods.iter().find(|p| matches!(p.phase, PodPhase::Failed | PodPhase::Unknown)) {
        return (StagePhase::Failed, Some(failed.failure()));
    }
    let count = pods.len() as u32;
    if was_running && count < gang {
        return (StagePhase::Failed, Some(format!("{} of {gang} pods of its running gang disappeared", gang - count)));
    }
    if count == 0 {
        return (if may_start { StagePhase::Pending } else { StagePhase::Waiting }, None);
    }
    let all = |f: &dyn Fn(PodPhase) -> bool| count == gang && pods.iter().all(|p| f(p.phase));
    if all(&|p| p == PodPhase::Succeeded) {
        (StagePhase::Succeeded, None)
    } else if all(&|p| matches!(p, PodPhase::Running | PodPhase::Succeeded)) {
        (StagePhase::Running, None)
    } else {
        (StagePhase::Pending, None)
    }
}

fn job_phase(stages: &[StageStatus], suspend: bool) -> JobPhase {
    if stages.iter().any(|s| s.phase == StagePhase::Failed) {
        JobPhase::Failed
    } else if !stages.is_empty() && stages.iter().all(|s| s.phase == StagePhase::Succeeded) {
        JobPhase::Succeeded
    } else if suspend {
        JobPhase::Suspended
    } else if stages.iter().any(|s| s.phase == StagePhase::Running) {
        JobPhase::Running
    } else {
        JobPhase::Pending
    }
}

fn stage_transition(stage: &str, phase: StagePhase, failure: Option<&String>) -> Transition {
    let message = match (phase, failure) {
        (StagePhase::Failed, Some(why)) => format!("stage {stage} failed: {why}"),
        (StagePhase::Pending, _) => format!("stage {stage} started: creating its gang"),
        _ => format!("stage {stage} is {phase:?}"),
    };
    let reason = if phase == StagePhase::Pending { "StageStarted".to_string() } else { format!("Stage{phase:?}") };
    Transition { action: format!("Stage/{stage}"), reason, message, warning: phase == StagePhase::Failed }
}

fn is_true(status: &RLHFJobStatus, type_: &str) -> bool {
    status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

fn condition_message(status: &RLHFJobStatus, type_: &str) -> String {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.message.clone()).unwrap_or_default()
}

/// Sets a condition, keeping lastTransitionTime when the status did not flip. A False condition
/// that never was True is not added (conditions stay short).
fn set_condition(conds: &mut Vec<Condition>, type_: &str, value: bool, reason: &str, message: &str, obs: &Observed<'_>) {
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
