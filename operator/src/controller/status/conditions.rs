//! The job's conditions (metav1 Condition): set keeping their transition times, and the ones that
//! follow from stage phases and from what the stage pass found.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{
    COND_FAILED, COND_INVALID_SPEC, COND_RESTARTING, COND_SPEC_CHANGE_DEFERRED, COND_SUCCEEDED,
    COND_SUSPENDED, Observed,
};
use crate::crd::{JobPhase, RLHFJobStatus, StagePhase};

/// The conditions of a valid job after its stages were decided: `failures` are the stages'
/// failure reasons, `deferred` the stages running with an earlier spec.
pub(super) fn set_job_conditions(
    prev: &RLHFJobStatus,
    status: &mut RLHFJobStatus,
    failures: &[String],
    deferred: &[String],
    obs: &Observed<'_>,
) {
    let phase = status.phase.unwrap_or(JobPhase::Pending);
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
        status,
        COND_RESTARTING,
        StagePhase::Restarting,
        "GangRestarting",
        obs,
    );
    set_stage_condition(
        status,
        COND_SUSPENDED,
        StagePhase::Suspended,
        "JobSuspended",
        obs,
    );
}

/// A job condition that is True while some stage is in `phase`, with those stages' messages.
pub(super) fn set_stage_condition(
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

pub(super) fn is_true(status: &RLHFJobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub(super) fn condition_message(status: &RLHFJobStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Sets a condition, keeping lastTransitionTime when the status did not flip. A False condition
/// that never was True is not added (conditions stay short).
pub(super) fn set_condition(
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

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
