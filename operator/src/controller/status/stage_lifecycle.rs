//! (pure) One stage's lifecycle: from its previous status, its pods, the nodes and its trainer's
//! progress to its next status and what must happen to its gang. Failures restart the WHOLE gang
//! (a collective cannot survive a lost rank), after exponential backoff, up to backoffLimit;
//! exit code 2 (the trainer's permanent error) fails the stage at once.
use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::Transition;
use crate::controller::observe::{ObservedPod, PodPhase, TrainerProgress};
use crate::controller::validate::RunPolicyPlan;
use crate::crd::{StagePhase, StageStatus};

/// The trainer's "bad config or input: do not retry" exit code (docs/ARCHITECTURE.md#exit-codes).
pub const PERMANENT_ERROR_EXIT_CODE: i32 = 2;
/// First restart waits this long; each further one twice as long, up to BACKOFF_CAP_SECONDS.
pub const BACKOFF_BASE_SECONDS: i64 = 5;
pub const BACKOFF_CAP_SECONDS: i64 = 300;

/// Event action of a gang restart (`Restart/<stage>`); the restart counter metric keys on it.
pub const RESTART_ACTION_PREFIX: &str = "Restart/";

/// Which of a stage's pods to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Every pod (a gang restart, suspension): the next gang reuses their names.
    All,
    /// Pods still Pending or Running (the rest of a failed gang, which cannot finish).
    Unfinished,
}

/// What a stage needs from the world to take its next step.
pub struct StageInputs<'a> {
    pub name: &'a str,
    /// Every pod of the stage, of any gang generation, including ones being deleted.
    pub pods: Vec<&'a ObservedPod>,
    pub gang_size: u32,
    /// Its dependencies succeeded and the job has not failed.
    pub may_start: bool,
    /// Another stage failed the job: nothing is restarted any more.
    pub job_failed: bool,
    pub suspend: bool,
    pub policy: &'a RunPolicyPlan,
    pub gang_timeout_seconds: u32,
    /// What the stage's rank 0 reports now, if it could be read.
    pub progress: Option<TrainerProgress>,
    pub not_ready_nodes: &'a BTreeSet<String>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageOutcome {
    pub status: StageStatus,
    /// The current generation's gang should exist: create whatever pods of it are missing.
    pub launch: bool,
    pub cleanup: Option<Cleanup>,
    pub transitions: Vec<Transition>,
    /// Why the stage failed, for the job's Failed condition.
    pub failure: Option<String>,
    /// Decide again no later than this, even if nothing changes in the cluster.
    pub wake_at: Option<Timestamp>,
}

/// How long the `restart`-th restart (1-based) waits.
pub fn backoff(restart: u32) -> SignedDuration {
    let exp = restart.saturating_sub(1).min(16);
    SignedDuration::from_secs((BACKOFF_BASE_SECONDS << exp).min(BACKOFF_CAP_SECONDS))
}

fn seconds_since(then: &Option<Time>, now: Timestamp) -> Option<i64> {
    then.as_ref().map(|t| now.duration_since(t.0).as_secs())
}

fn after(t: Timestamp, seconds: i64) -> Timestamp {
    t.saturating_add(SignedDuration::from_secs(seconds))
        .unwrap_or(t)
}

pub fn advance(prev: &StageStatus, input: StageInputs<'_>) -> StageOutcome {
    let mut out = StageOutcome {
        status: prev.clone(),
        launch: false,
        cleanup: None,
        transitions: Vec::new(),
        failure: None,
        wake_at: None,
    };
    if matches!(prev.phase, StagePhase::Pending | StagePhase::Running) {
        record_progress(&mut out.status, input.progress, input.now);
    }
    match prev.phase {
        StagePhase::Succeeded | StagePhase::Failed => {}
        StagePhase::Waiting if !input.may_start => {}
        _ if input.suspend => suspend(&mut out, &input),
        StagePhase::Suspended | StagePhase::Restarting => start_next_gang(&mut out, &input),
        _ => follow_gang(&mut out, &input),
    }
    if out.status.phase != prev.phase {
        out.transitions.push(phase_transition(
            input.name,
            &out.status,
            out.failure.as_deref(),
        ));
    }
    out
}

/// Step and (PPO's) reward from the trainer; a changed step is progress.
fn record_progress(s: &mut StageStatus, progress: Option<TrainerProgress>, now: Timestamp) {
    let Some(p) = progress else { return };
    if s.last_step != Some(p.step) {
        s.last_progress_time = Some(Time(now));
    }
    s.last_step = Some(p.step);
    // Other stages export the reward gauge too, at 0, and so does an RL stage before its first
    // step: only an RL stage's, once it has stepped, means anything.
    let reward = p.reward_mean.filter(|_| s.kind.is_rl() && p.step > 0);
    s.last_reward = reward.or(s.last_reward);
    s.first_reward = s.first_reward.or(reward);
}

fn suspend(out: &mut StageOutcome, input: &StageInputs<'_>) {
    let s = &mut out.status;
    if s.phase != StagePhase::Waiting {
        s.phase = StagePhase::Suspended;
        s.gang_start_time = None;
        s.message = Some("the job is suspended; checkpoints are kept".into());
    }
    if !input.pods.is_empty() {
        out.cleanup = Some(Cleanup::All);
    }
}

/// Restarting or resuming: once the old gang is gone and the backoff has passed, a new one starts.
fn start_next_gang(out: &mut StageOutcome, input: &StageInputs<'_>) {
    let s = &mut out.status;
    if !input.pods.is_empty() {
        out.cleanup = Some(Cleanup::All);
        return;
    }
    if let Some(at) = s
        .retry_after
        .as_ref()
        .map(|t| t.0)
        .filter(|at| *at > input.now)
    {
        out.wake_at = Some(at);
        return;
    }
    if s.phase == StagePhase::Suspended {
        s.gang_generation += 1;
    }
    s.phase = StagePhase::Pending;
    s.retry_after = None;
    s.message = None;
    out.launch = true;
}

/// Waiting/Queued/Pending/Running: watch the current gang for success, failure and stalls.
fn follow_gang(out: &mut StageOutcome, input: &StageInputs<'_>) {
    let generation = out.status.gang_generation;
    let current: Vec<&ObservedPod> = input
        .pods
        .iter()
        .copied()
        .filter(|p| p.generation == generation && !p.deleting)
        .collect();
    let created = out.status.gang_start_time.is_some();
    if let Some(why) = created
        .then(|| gang_problem(&out.status, &current, input))
        .flatten()
    {
        return match why {
            Problem::Permanent(why) => fail(out, why, Cleanup::Unfinished),
            Problem::Retryable(why) => restart(out, input, why),
            Problem::Timeout(why) => requeue(out, input, why),
        };
    }
    let count = current.len() as u32;
    let all = |ok: &dyn Fn(PodPhase) -> bool| {
        count == input.gang_size && current.iter().all(|p| ok(p.phase))
    };
    let s = &mut out.status;
    if all(&|p| p == PodPhase::Succeeded) {
        s.phase = StagePhase::Succeeded;
        s.message = None;
    } else if all(&|p| matches!(p, PodPhase::Running | PodPhase::Succeeded)) {
        if s.phase != StagePhase::Running {
            s.last_progress_time = Some(Time(input.now));
        }
        s.phase = StagePhase::Running;
        s.message = None;
        out.wake_at = input.policy.progress_deadline_seconds.and_then(|d| {
            s.last_progress_time
                .as_ref()
                .map(|t| after(t.0, d as i64 + 1))
        });
    } else {
        // A Queued stage stays Queued until admission says otherwise (the reconciler decides).
        if s.phase != StagePhase::Queued {
            s.phase = StagePhase::Pending;
        }
        out.launch = true;
        out.wake_at = s
            .gang_start_time
            .as_ref()
            .map(|t| after(t.0, input.gang_timeout_seconds as i64 + 1));
    }
}

enum Problem {
    Permanent(String),
    Retryable(String),
    Timeout(String),
}

/// What is wrong with a created gang, if anything, most decisive first.
fn gang_problem(
    s: &StageStatus,
    current: &[&ObservedPod],
    input: &StageInputs<'_>,
) -> Option<Problem> {
    if let Some(p) = current
        .iter()
        .find(|p| matches!(p.phase, PodPhase::Failed | PodPhase::Unknown))
    {
        let why = p.failure();
        return Some(if p.exit_code == Some(PERMANENT_ERROR_EXIT_CODE) {
            Problem::Permanent(format!(
                "{why}: a permanent error (bad config or input), not retried"
            ))
        } else {
            Problem::Retryable(why)
        });
    }
    let count = current.len() as u32;
    if count < input.gang_size {
        let missing = input.gang_size - count;
        return Some(Problem::Retryable(format!(
            "{missing} of the gang's {} pods were deleted or evicted",
            input.gang_size
        )));
    }
    let active = |p: &&&ObservedPod| p.is_active();
    if let Some(p) = current.iter().filter(active).find(|p| {
        p.node
            .as_ref()
            .is_some_and(|n| input.not_ready_nodes.contains(n))
    }) {
        return Some(Problem::Retryable(format!(
            "node {} of pod {} is not Ready",
            p.node.as_deref().unwrap_or_default(),
            p.name
        )));
    }
    let running = current
        .iter()
        .all(|p| matches!(p.phase, PodPhase::Running | PodPhase::Succeeded));
    if running && s.phase == StagePhase::Running {
        let deadline = input.policy.progress_deadline_seconds.map(|d| d as i64);
        let idle = seconds_since(&s.last_progress_time, input.now);
        if let (Some(deadline), Some(idle)) = (deadline, idle)
            && idle > deadline
        {
            let step = s
                .last_step
                .map_or("none yet".to_string(), |n| n.to_string());
            return Some(Problem::Retryable(format!(
                "no progress for {idle}s (progressDeadlineSeconds {deadline}; last step {step})"
            )));
        }
    }
    let waited = seconds_since(&s.gang_start_time, input.now).unwrap_or(0);
    if !running && waited > input.gang_timeout_seconds as i64 {
        return Some(Problem::Timeout(format!(
            "the gang was not fully Running {waited}s after it was admitted (scheduling.timeoutSeconds {}); requeued",
            input.gang_timeout_seconds
        )));
    }
    None
}

fn fail(out: &mut StageOutcome, why: String, cleanup: Cleanup) {
    let s = &mut out.status;
    s.phase = StagePhase::Failed;
    s.retry_after = None;
    s.message = Some(why.clone());
    out.failure = Some(why);
    out.cleanup = Some(cleanup);
}

/// Tears the whole gang down; a new generation starts after the backoff, unless the limit is spent.
fn restart(out: &mut StageOutcome, input: &StageInputs<'_>, why: String) {
    let limit = input.policy.backoff_limit;
    if input.job_failed {
        return fail(
            out,
            format!("{why}; not restarted: the job has failed"),
            Cleanup::Unfinished,
        );
    }
    if out.status.restarts >= limit {
        return fail(
            out,
            format!("{why}; backoffLimit ({limit} gang restarts) reached"),
            Cleanup::Unfinished,
        );
    }
    let s = &mut out.status;
    s.restarts += 1;
    let wait = backoff(s.restarts);
    tear_down(
        out,
        input,
        input.now.saturating_add(wait).unwrap_or(input.now),
    );
    let s = &mut out.status;
    s.message = Some(format!(
        "gang restart {}/{limit} in {}s: {why}",
        s.restarts,
        wait.as_secs()
    ));
    out.transitions.push(Transition {
        action: format!("{RESTART_ACTION_PREFIX}{}", input.name),
        reason: "GangRestarting".into(),
        message: format!(
            "stage {}: {}",
            input.name,
            out.status.message.as_deref().unwrap_or_default()
        ),
        warning: true,
    });
}

/// An admitted gang that never got fully Running gives its place back and queues again (no
/// restart is counted: nothing ran).
fn requeue(out: &mut StageOutcome, input: &StageInputs<'_>, why: String) {
    tear_down(out, input, input.now);
    out.status.message = Some(why.clone());
    out.transitions.push(Transition {
        action: format!("Timeout/{}", input.name),
        reason: "GangTimeout".into(),
        message: format!("stage {}: {why}", input.name),
        warning: true,
    });
}

fn tear_down(out: &mut StageOutcome, input: &StageInputs<'_>, retry_after: Timestamp) {
    let s = &mut out.status;
    s.phase = StagePhase::Restarting;
    s.gang_generation += 1;
    s.gang_start_time = None;
    s.retry_after = Some(Time(retry_after));
    out.cleanup = Some(Cleanup::All);
    out.wake_at = Some(retry_after.max(input.now));
}

fn phase_transition(stage: &str, s: &StageStatus, failure: Option<&str>) -> Transition {
    let phase = s.phase;
    let message = match (phase, failure, s.message.as_deref()) {
        (StagePhase::Failed, Some(why), _) => format!("stage {stage} failed: {why}"),
        (StagePhase::Pending, _, _) => format!(
            "stage {stage} started: creating its gang (generation {})",
            s.gang_generation
        ),
        (_, _, Some(why)) => format!("stage {stage} is {phase:?}: {why}"),
        _ => format!("stage {stage} is {phase:?}"),
    };
    let reason = if phase == StagePhase::Pending {
        "StageStarted".to_string()
    } else {
        format!("Stage{phase:?}")
    };
    Transition {
        action: format!("Stage/{stage}"),
        reason,
        message,
        warning: phase == StagePhase::Failed,
    }
}
