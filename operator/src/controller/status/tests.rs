use serde_json::{Value, json};

use super::*;
use crate::controller::fixtures::validated;

/// sft + rm -> ppo, gangs of 2 pods on a ReadWriteMany volume.
fn spec() -> Value {
    let dataset = json!({"synthetic": {"task": "copy", "samples": 16}});
    json!({
        "image": "registry.local/rlhf-trainer:test",
        "model": {"family": "gpt2", "init": "random",
                  "architecture": {"vocabSize": 50257, "hiddenSize": 16, "numLayers": 1, "numHeads": 2, "maxPositions": 64}},
        "parallelism": {"nodes": 2},
        "storage": {"accessModes": ["ReadWriteMany"]},
        "stages": [
            {"name": "sft", "kind": "sft", "dataset": dataset, "training": {"maxLength": 32}},
            {"name": "rm", "kind": "rm", "dataset": dataset, "training": {"maxLength": 32}},
            {"name": "ppo", "kind": "ppo", "dependsOn": ["sft", "rm"], "dataset": dataset, "training": {"maxLength": 32},
             "models": {"init": {"stage": "sft"}, "rewardModel": {"stage": "rm"}}, "ppo": {"generation": {"maxNewTokens": 4}}}
        ]
    })
}

fn job() -> ValidatedJob {
    validated(spec())
}

/// `second` seconds after the first observation.
fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

fn hash(stage: &str) -> String {
    format!("hash-{stage}")
}

fn decide_at(job: &ValidatedJob, prev: &RLHFJobStatus, pods: &[ObservedPod], second: i64) -> Decision {
    let hashes = job.stages.iter().map(|s| (s.resolved.name.clone(), hash(&s.resolved.name))).collect();
    decide(job, prev, &Observed { generation: Some(4), pods, desired_hashes: &hashes, now: at(second) })
}

/// Decides once per round (round i at second i), each time on the status the previous round returned.
fn history(job: &ValidatedJob, rounds: &[Vec<ObservedPod>]) -> Decision {
    let mut prev = RLHFJobStatus::default();
    let mut last = None;
    for (second, pods) in rounds.iter().enumerate() {
        let d = decide_at(job, &prev, pods, second as i64);
        prev = d.status.clone();
        last = Some(d);
    }
    last.expect("at least one round")
}

/// Both pods of each named stage's gang, in the given phase, started from the current spec.
fn pods(gangs: &[(&str, PodPhase)]) -> Vec<ObservedPod> {
    gangs
        .iter()
        .flat_map(|&(stage, phase)| {
            (0..2).map(move |rank| ObservedPod {
                name: format!("chat-{stage}-{rank}"),
                stage: stage.to_string(),
                node_rank: rank,
                generation: 0,
                phase,
                spec_hash: Some(hash(stage)),
                exit_code: None,
                reason: None,
                deleting: false,
            })
        })
        .collect()
}

fn phases(status: &RLHFJobStatus) -> Vec<(&str, StagePhase)> {
    status.stages.iter().map(|s| (s.name.as_str(), s.phase)).collect()
}

fn condition<'a>(status: &'a RLHFJobStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition: {status:?}"))
}

fn true_condition(type_: &str, reason: &str, message: &str, since: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(at(since)),
        observed_generation: Some(4),
    }
}

fn transition(action: &str, reason: &str, message: &str, warning: bool) -> Transition {
    Transition { action: action.into(), reason: reason.into(), message: message.into(), warning }
}

fn launches(d: &Decision) -> Vec<&str> {
    d.launch.iter().map(String::as_str).collect()
}

use PodPhase::{Failed, Pending, Running, Succeeded};

#[test]
fn a_fresh_job_starts_the_stages_without_dependencies() {
    let d = history(&job(), &[vec![]]);
    assert_eq!(phases(&d.status), [("sft", StagePhase::Pending), ("rm", StagePhase::Pending), ("ppo", StagePhase::Waiting)]);
    assert_eq!(launches(&d), ["sft", "rm"]);
    assert_eq!(d.status.phase, Some(JobPhase::Pending));
    assert_eq!(d.status.current_stage.as_deref(), Some("sft,rm"));
    assert_eq!(d.status.observed_generation, Some(4));
    assert_eq!(d.status.start_time, Some(Time(at(0))));
    assert!(d.status.conditions.is_empty(), "{:?}", d.status.conditions);
    let sft = &d.status.stages[0];
    assert_eq!((sft.start_time.clone(), sft.output.as_deref()), (Some(Time(at(0))), Some("/rlhf/team-a/chat/sft")));
    assert_eq!((d.status.stages[2].start_time.clone(), d.status.stages[2].output.as_deref()), (None, None));
    assert_eq!(
        d.transitions,
        [
            transition("Stage/sft", "StageStarted", "stage sft started: creating its gang", false),
            transition("Stage/rm", "StageStarted", "stage rm started: creating its gang", false),
        ]
    );
}

#[test]
fn a_stage_runs_once_its_whole_gang_runs() {
    let mut partly = pods(&[("sft", Running), ("rm", Running)]);
    partly[3].phase = Pending;
    let d = history(&job(), &[vec![], partly]);
    assert_eq!(phases(&d.status)[..2], [("sft", StagePhase::Running), ("rm", StagePhase::Pending)]);

    let d = history(&job(), &[vec![], pods(&[("sft", Running), ("rm", Running)])]);
    assert_eq!(phases(&d.status), [("sft", StagePhase::Running), ("rm", StagePhase::Running), ("ppo", StagePhase::Waiting)]);
    assert_eq!(d.status.phase, Some(JobPhase::Running));
    // Spec order, as the stages are listed in the status.
    assert_eq!(d.status.current_stage.as_deref(), Some("sft,rm"));
    assert_eq!(launches(&d), ["sft", "rm"]);
    assert_eq!(d.transitions[0], transition("Stage/sft", "StageRunning", "stage sft is Running", false));
}

#[test]
fn ppo_starts_when_sft_and_rm_succeeded() {
    let d = history(&job(), &[vec![], pods(&[("sft", Running), ("rm", Running)]), pods(&[("sft", Succeeded), ("rm", Succeeded)])]);
    assert_eq!(phases(&d.status), [("sft", StagePhase::Succeeded), ("rm", StagePhase::Succeeded), ("ppo", StagePhase::Pending)]);
    assert_eq!(launches(&d), ["ppo"]);
    assert_eq!(d.status.stages[0].completion_time, Some(Time(at(2))));
    assert_eq!(d.status.phase, Some(JobPhase::Pending));
    assert_eq!(d.status.current_stage.as_deref(), Some("ppo"));
}

#[test]
fn succeeded_stages_stay_succeeded_after_their_pods_are_cleaned() {
    let d = history(
        &job(),
        &[
            vec![],
            pods(&[("sft", Running), ("rm", Running)]),
            pods(&[("sft", Succeeded), ("rm", Succeeded)]),
            pods(&[("ppo", Running)]),
            pods(&[("ppo", Succeeded)]),
        ],
    );
    assert_eq!(phases(&d.status), [("sft", StagePhase::Succeeded), ("rm", StagePhase::Succeeded), ("ppo", StagePhase::Succeeded)]);
    assert_eq!(d.status.phase, Some(JobPhase::Succeeded));
    assert_eq!(d.status.completion_time, Some(Time(at(4))));
    assert_eq!(d.status.stages[0].completion_time, Some(Time(at(2))));
    assert_eq!(d.status.current_stage, None);
    assert!(d.launch.is_empty(), "{:?}", d.launch);
    assert_eq!(d.status.conditions, [true_condition("Succeeded", "AllStagesSucceeded", "every stage succeeded", 4)]);
    assert_eq!(
        d.transitions,
        [
            transition("Stage/ppo", "StageSucceeded", "stage ppo is Succeeded", false),
            transition("Job", "JobSucceeded", "job Succeeded", false),
        ]
    );
}

#[test]
fn a_failed_pod_fails_its_stage_and_the_job_and_nothing_launches_after() {
    let mut failing = pods(&[("sft", Running), ("rm", Pending)]);
    failing[1] = ObservedPod { phase: Failed, exit_code: Some(137), reason: Some("OOMKilled".into()), ..failing[1].clone() };
    // rm's gang is still being created: its second pod does not exist yet.
    failing.retain(|p| p.name != "chat-rm-1");
    let job = job();
    let d = history(&job, &[vec![], pods(&[("sft", Running), ("rm", Pending)]), failing.clone()]);
    assert_eq!(phases(&d.status), [("sft", StagePhase::Failed), ("rm", StagePhase::Pending), ("ppo", StagePhase::Waiting)]);
    assert_eq!(d.status.phase, Some(JobPhase::Failed));
    assert_eq!(d.status.completion_time, Some(Time(at(2))));
    let why = "pod chat-sft-1 failed (exit code 137, OOMKilled)";
    assert_eq!(condition(&d.status, "Failed"), &true_condition("Failed", "StageFailed", &format!("stage sft: {why}"), 2));
    assert_eq!(
        d.transitions,
        [transition("Stage/sft", "StageFailed", &format!("stage sft failed: {why}"), true), transition("Job", "JobFailed", "job Failed", true)]
    );
    assert!(d.launch.is_empty(), "a failed job creates no pods: {:?}", d.launch);

    let again = decide_at(&job, &d.status, &failing, 3);
    assert!(again.launch.is_empty(), "{:?}", again.launch);
    assert_eq!(again.status, d.status);
    assert_eq!(again.transitions, []);
}

#[test]
fn a_pod_gone_from_a_running_gang_fails_the_stage() {
    let mut shrunk = pods(&[("sft", Running), ("rm", Running)]);
    shrunk[0].deleting = true; // being deleted counts as gone
    let d = history(&job(), &[vec![], pods(&[("sft", Running), ("rm", Running)]), shrunk]);
    assert_eq!(phases(&d.status)[0], ("sft", StagePhase::Failed));
    assert_eq!(d.status.phase, Some(JobPhase::Failed));
    assert_eq!(condition(&d.status, "Failed").message, "stage sft: 1 of 2 pods of its running gang disappeared");
}

/// sft's running gang was started from an older spec.
fn stale_round() -> Vec<ObservedPod> {
    let mut round = pods(&[("sft", Running), ("rm", Running)]);
    round[..2].iter_mut().for_each(|p| p.spec_hash = Some("old".into()));
    round
}

#[test]
fn a_spec_change_waits_for_running_stages() {
    let d = history(&job(), &[vec![], stale_round()]);
    assert_eq!(launches(&d), ["rm"]);
    assert_eq!(phases(&d.status)[0], ("sft", StagePhase::Running));
    let message = "stage(s) sft run with an earlier spec; the change applies to stages not started yet and to their next gang";
    assert_eq!(d.status.conditions, [true_condition("SpecChangeDeferred", "StageAlreadyStarted", message, 1)]);
}

#[test]
fn deciding_again_on_the_same_pods_changes_nothing() {
    let job = job();
    let first = history(&job, &[vec![], stale_round()]);
    let second = decide_at(&job, &first.status, &stale_round(), 60);
    // Same status (so no patch), the condition keeps its lastTransitionTime, no new events.
    assert_eq!(second.status, first.status);
    assert_eq!(condition(&second.status, "SpecChangeDeferred").last_transition_time, Time(at(1)));
    assert_eq!(second.transitions, []);

    let resolved = decide_at(&job, &second.status, &pods(&[("sft", Running), ("rm", Running)]), 61);
    let deferred = condition(&resolved.status, "SpecChangeDeferred");
    assert_eq!((deferred.status.as_str(), deferred.reason.as_str(), deferred.message.as_str()), ("False", "Resolved", "SpecChangeDeferred no longer applies"));
    assert_eq!(deferred.last_transition_time, Time(at(61)));
}

fn invalid(prev: &RLHFJobStatus, errors: &[FieldError], second: i64) -> Decision {
    let no_hashes = BTreeMap::new();
    decide_invalid(prev, errors, &Observed { generation: Some(4), pods: &[], desired_hashes: &no_hashes, now: at(second) })
}

#[test]
fn an_invalid_spec_is_reported_once() {
    let errors = [
        FieldError::new("spec.env[0].name", "MASTER_ADDR is set by the operator"),
        FieldError::new("spec.scheduling.queue", "a queue only applies to gang: volcano"),
    ];
    let message = "spec.env[0].name: MASTER_ADDR is set by the operator; spec.scheduling.queue: a queue only applies to gang: volcano";
    let d = invalid(&RLHFJobStatus::default(), &errors, 0);
    assert_eq!(d.status.phase, Some(JobPhase::Failed));
    assert_eq!(d.status.conditions, [true_condition("InvalidSpec", "InvalidSpec", message, 0)]);
    assert_eq!(d.transitions, [transition("Validate", "InvalidSpec", message, true)]);
    assert!(d.launch.is_empty());

    let again = invalid(&d.status, &errors, 30);
    assert_eq!((&again.status, &again.transitions), (&d.status, &Vec::new()));

    let other = invalid(&d.status, &errors[1..], 31);
    assert_eq!(other.transitions.len(), 1);
    assert_eq!(condition(&other.status, "InvalidSpec").last_transition_time, Time(at(0)));

    // Fixing the spec resolves the condition and the job starts.
    let fixed = decide_at(&job(), &d.status, &[], 40);
    let cond = condition(&fixed.status, "InvalidSpec");
    assert_eq!((cond.status.as_str(), cond.reason.as_str(), cond.last_transition_time.clone()), ("False", "Resolved", Time(at(40))));
    assert_eq!((fixed.status.phase, launches(&fixed)), (Some(JobPhase::Pending), vec!["sft", "rm"]));

    // An edit that breaks a started job keeps its phase: its running gangs go on.
    let started = invalid(&fixed.status, &errors, 41);
    assert_eq!((started.status.phase, started.status.stages.clone()), (Some(JobPhase::Pending), fixed.status.stages));
}

#[test]
fn a_suspended_job_launches_nothing() {
    let mut v = spec();
    v["runPolicy"] = json!({"suspend": true});
    let suspended = validated(v);
    let d = history(&suspended, &[vec![]]);
    assert_eq!(phases(&d.status), [("sft", StagePhase::Waiting), ("rm", StagePhase::Waiting), ("ppo", StagePhase::Waiting)]);
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert_eq!((d.launch.len(), d.transitions.len()), (0, 0));

    // Suspended while running: the gangs are not topped up.
    let running = history(&job(), &[vec![], pods(&[("sft", Running), ("rm", Running)])]);
    let d = decide_at(&suspended, &running.status, &pods(&[("sft", Running), ("rm", Pending)]), 2);
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert!(d.launch.is_empty(), "{:?}", d.launch);
}
