use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{Value, json};

use super::*;
use crate::controller::fixtures::validated;
use crate::controller::observe::PodPhase;

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
             "models": {"init": {"stage": "sft"}, "rewardModel": {"stage": "rm"}}, "rl": {"generation": {"maxNewTokens": 4}}}
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

fn decide_at(
    job: &ValidatedJob,
    prev: &RLHFJobStatus,
    pods: &[ObservedPod],
    second: i64,
) -> JobPlan {
    decide_with(job, prev, pods, second, &BTreeMap::new(), &BTreeSet::new())
}

/// Decides as the reconciler does, which then admits every launched gang (room for all).
fn decide_with(
    job: &ValidatedJob,
    prev: &RLHFJobStatus,
    pods: &[ObservedPod],
    second: i64,
    progress: &BTreeMap<String, TrainerProgress>,
    not_ready: &BTreeSet<String>,
) -> JobPlan {
    let hashes = job
        .stages
        .iter()
        .map(|s| (s.resolved.name.clone(), hash(&s.resolved.name)))
        .collect();
    let obs = Observed {
        generation: Some(4),
        pods,
        desired_hashes: &hashes,
        progress,
        not_ready_nodes: not_ready,
        now: at(second),
    };
    let mut d = decide(job, prev, &obs);
    for stage in d.launch.clone() {
        let _waited = d.admitted(&stage, at(second));
    }
    d
}

/// Decides once per round (round i at second i), each time on the status the previous round returned.
fn history(job: &ValidatedJob, rounds: &[Vec<ObservedPod>]) -> JobPlan {
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
                message: None,
                deleting: false,
                node: Some(format!("node-{rank}")),
                ip: Some(format!("10.0.0.{rank}")),
            })
        })
        .collect()
}

fn phases(status: &RLHFJobStatus) -> Vec<(&str, StagePhase)> {
    status
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.phase))
        .collect()
}

fn condition<'a>(status: &'a RLHFJobStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {status:?}"))
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
    Transition {
        action: action.into(),
        reason: reason.into(),
        message: message.into(),
        warning,
    }
}

fn launches(d: &JobPlan) -> Vec<&str> {
    d.launch.iter().map(String::as_str).collect()
}

use PodPhase::{Failed, Pending, Running, Succeeded};

#[test]
fn a_fresh_job_starts_the_stages_without_dependencies() {
    let d = history(&job(), &[vec![]]);
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Pending),
            ("rm", StagePhase::Pending),
            ("ppo", StagePhase::Waiting)
        ]
    );
    assert_eq!(launches(&d), ["sft", "rm"]);
    assert_eq!(d.status.phase, Some(JobPhase::Pending));
    assert_eq!(d.status.current_stage.as_deref(), Some("sft,rm"));
    assert_eq!(d.status.observed_generation, Some(4));
    assert_eq!(d.status.start_time, Some(Time(at(0))));
    assert!(d.status.conditions.is_empty(), "{:?}", d.status.conditions);
    let sft = &d.status.stages[0];
    assert_eq!(
        (sft.start_time.clone(), sft.output.as_deref()),
        (Some(Time(at(0))), Some("/rlhf/team-a/chat/sft"))
    );
    assert_eq!(
        (
            d.status.stages[2].start_time.clone(),
            d.status.stages[2].output.as_deref()
        ),
        (None, None)
    );
    assert_eq!(
        d.transitions,
        [
            transition(
                "Stage/sft",
                "StageStarted",
                "stage sft started: creating its gang (generation 0)",
                false
            ),
            transition(
                "Stage/rm",
                "StageStarted",
                "stage rm started: creating its gang (generation 0)",
                false
            ),
        ]
    );
}

#[test]
fn a_stage_runs_once_its_whole_gang_runs() {
    let mut partly = pods(&[("sft", Running), ("rm", Running)]);
    partly[3].phase = Pending;
    let d = history(&job(), &[vec![], partly]);
    assert_eq!(
        phases(&d.status)[..2],
        [("sft", StagePhase::Running), ("rm", StagePhase::Pending)]
    );

    let d = history(
        &job(),
        &[vec![], pods(&[("sft", Running), ("rm", Running)])],
    );
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Running),
            ("rm", StagePhase::Running),
            ("ppo", StagePhase::Waiting)
        ]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Running));
    // Spec order, as the stages are listed in the status.
    assert_eq!(d.status.current_stage.as_deref(), Some("sft,rm"));
    assert!(
        d.launch.is_empty(),
        "a running gang is complete: {:?}",
        d.launch
    );
    assert_eq!(
        d.transitions[0],
        transition("Stage/sft", "StageRunning", "stage sft is Running", false)
    );
}

#[test]
fn ppo_starts_when_sft_and_rm_succeeded() {
    let d = history(
        &job(),
        &[
            vec![],
            pods(&[("sft", Running), ("rm", Running)]),
            pods(&[("sft", Succeeded), ("rm", Succeeded)]),
        ],
    );
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Succeeded),
            ("rm", StagePhase::Succeeded),
            ("ppo", StagePhase::Pending)
        ]
    );
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
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Succeeded),
            ("rm", StagePhase::Succeeded),
            ("ppo", StagePhase::Succeeded)
        ]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Succeeded));
    assert_eq!(d.status.completion_time, Some(Time(at(4))));
    assert_eq!(d.status.stages[0].completion_time, Some(Time(at(2))));
    assert_eq!(d.status.current_stage, None);
    assert!(d.launch.is_empty(), "{:?}", d.launch);
    assert_eq!(
        d.status.conditions,
        [true_condition(
            "Succeeded",
            "AllStagesSucceeded",
            "every stage succeeded",
            4
        )]
    );
    assert_eq!(
        d.transitions,
        [
            transition(
                "Stage/ppo",
                "StageSucceeded",
                "stage ppo is Succeeded",
                false
            ),
            transition("Job", "JobSucceeded", "job Succeeded", false),
        ]
    );
}

/// sft and rm running at second 1; at second 2 sft's rank 1 has `failed` that way.
fn sft_fails(job: &ValidatedJob, failed: impl FnOnce(&mut ObservedPod)) -> JobPlan {
    let mut failing = pods(&[("sft", Running), ("rm", Running)]);
    failed(&mut failing[1]);
    history(
        job,
        &[vec![], pods(&[("sft", Running), ("rm", Running)]), failing],
    )
}

#[test]
fn a_failed_pod_restarts_the_whole_gang_after_a_backoff() {
    let job = job();
    let d = sft_fails(&job, |p| {
        p.phase = Failed;
        p.exit_code = Some(137);
        p.reason = Some("OOMKilled".into());
    });
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Restarting),
            ("rm", StagePhase::Running),
            ("ppo", StagePhase::Waiting)
        ]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Restarting));
    let sft = &d.status.stages[0];
    assert_eq!(
        (sft.restarts, sft.gang_generation, sft.retry_after.clone()),
        (1, 1, Some(Time(at(2 + BACKOFF_FIRST))))
    );
    let why = "gang restart 1/3 in 5s: pod chat-sft-1 failed (exit code 137, OOMKilled)";
    assert_eq!(sft.message.as_deref(), Some(why));
    assert_eq!(
        d.cleanup,
        BTreeMap::from([("sft".to_string(), Cleanup::All)]),
        "the whole gang goes, not just the failed pod"
    );
    assert!(d.launch.is_empty());
    assert_eq!(
        condition(&d.status, "Restarting").message,
        format!("stage sft: {why}")
    );
    assert_eq!(
        d.transitions[0],
        transition(
            "Restart/sft",
            "GangRestarting",
            &format!("stage sft: {why}"),
            true
        )
    );

    // While the old pods are still there nothing starts, even after the backoff.
    let mut old = pods(&[("sft", Running), ("rm", Running)]);
    old[0].deleting = true;
    let waiting = decide_at(&job, &d.status, &old, 30);
    assert_eq!(
        (waiting.status.stages[0].phase, waiting.cleanup.get("sft")),
        (StagePhase::Restarting, Some(&Cleanup::All))
    );
    // Old pods gone, backoff not over: wait for it.
    let rm_only = pods(&[("rm", Running)]);
    let early = decide_at(&job, &d.status, &rm_only, 3);
    assert_eq!(
        (early.status.stages[0].phase, early.wake_at),
        (StagePhase::Restarting, Some(at(2 + BACKOFF_FIRST)))
    );
    // Then generation 1 starts.
    let next = decide_at(&job, &d.status, &rm_only, 2 + BACKOFF_FIRST);
    assert_eq!(
        (
            next.status.stages[0].phase,
            next.status.stages[0].gang_generation
        ),
        (StagePhase::Pending, 1)
    );
    assert_eq!(launches(&next), ["sft"]);
    assert!(
        next.status
            .conditions
            .iter()
            .all(|c| c.type_ != "Restarting" || c.status == "False")
    );
}

const BACKOFF_FIRST: i64 = 5;

#[test]
fn backoff_doubles_up_to_a_cap() {
    let secs: Vec<i64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

#[test]
fn exit_code_2_fails_the_stage_at_once_and_stops_the_rest_of_its_gang() {
    let d = sft_fails(&job(), |p| {
        p.phase = Failed;
        p.exit_code = Some(PERMANENT_ERROR_EXIT_CODE);
    });
    assert_eq!(phases(&d.status)[0], ("sft", StagePhase::Failed));
    assert_eq!(
        (d.status.phase, d.status.stages[0].restarts),
        (Some(JobPhase::Failed), 0)
    );
    let why =
        "pod chat-sft-1 failed (exit code 2): a permanent error (bad config or input), not retried";
    assert_eq!(
        condition(&d.status, "Failed").message,
        format!("stage sft: {why}")
    );
    assert_eq!(
        d.cleanup,
        BTreeMap::from([("sft".to_string(), Cleanup::Unfinished)])
    );
    assert!(
        d.launch.is_empty(),
        "a failed job creates no pods: {:?}",
        d.launch
    );
    let rm_running = pods(&[("rm", Running)]);
    let again = decide_at(&job(), &d.status, &rm_running, 3);
    assert_eq!(
        (again.status.clone(), again.transitions.len()),
        (d.status.clone(), 0),
        "sticky, and reported once"
    );
    // The job has failed: a gang that breaks now is not restarted.
    let mut rm_failing = rm_running;
    rm_failing[0].phase = Failed;
    let after = decide_at(&job(), &again.status, &rm_failing, 4);
    assert_eq!(
        (
            after.status.stages[1].phase,
            after.status.stages[1].restarts
        ),
        (StagePhase::Failed, 0)
    );
    assert!(
        after.status.stages[1]
            .message
            .as_deref()
            .unwrap()
            .ends_with("not restarted: the job has failed")
    );
}

#[test]
fn restarts_stop_at_the_backoff_limit() {
    let mut v = spec();
    v["runPolicy"] = json!({"backoffLimit": 1});
    let job = validated(v);
    let failed = |p: &mut ObservedPod| {
        p.phase = Failed;
        p.exit_code = Some(1);
    };
    let first = sft_fails(&job, failed);
    assert_eq!(
        (
            first.status.stages[0].phase,
            first.status.stages[0].restarts
        ),
        (StagePhase::Restarting, 1)
    );
    // Generation 1 starts and runs, then fails again: the limit is spent.
    let gen1 = |phase: PodPhase| -> Vec<ObservedPod> {
        pods(&[("sft", phase)])
            .into_iter()
            .map(|p| ObservedPod { generation: 1, ..p })
            .collect()
    };
    let started = decide_at(&job, &first.status, &[], 60);
    let running = decide_at(&job, &started.status, &gen1(Running), 61);
    let mut failing = gen1(Running);
    failed(&mut failing[0]);
    let d = decide_at(&job, &running.status, &failing, 62);
    assert_eq!(
        (d.status.stages[0].phase, d.status.stages[0].restarts),
        (StagePhase::Failed, 1)
    );
    assert!(
        d.status.stages[0]
            .message
            .as_deref()
            .unwrap()
            .ends_with("backoffLimit (1 gang restarts) reached"),
        "{:?}",
        d.status.stages[0].message
    );
}

#[test]
fn a_pod_gone_from_a_running_gang_restarts_it() {
    let d = sft_fails(&job(), |p| p.deleting = true); // being deleted counts as gone
    assert_eq!(
        (d.status.stages[0].phase, d.status.stages[0].restarts),
        (StagePhase::Restarting, 1)
    );
    assert!(
        d.status.stages[0]
            .message
            .as_deref()
            .unwrap()
            .ends_with("1 of the gang's 2 pods were deleted or evicted")
    );
}

#[test]
fn a_node_going_not_ready_restarts_the_gangs_on_it() {
    let job = job();
    let running = history(&job, &[vec![], pods(&[("sft", Running), ("rm", Running)])]);
    let down = BTreeSet::from(["node-1".to_string()]);
    let d = decide_with(
        &job,
        &running.status,
        &pods(&[("sft", Running), ("rm", Running)]),
        2,
        &BTreeMap::new(),
        &down,
    );
    assert_eq!(
        phases(&d.status)[..2],
        [
            ("sft", StagePhase::Restarting),
            ("rm", StagePhase::Restarting)
        ]
    );
    assert!(
        d.status.stages[0]
            .message
            .as_deref()
            .unwrap()
            .ends_with("node node-1 of pod chat-sft-1 is not Ready")
    );
}

/// What sft's and ppo's rank 0 report (both export the reward gauge).
fn progress(step: u64, reward: Option<f64>) -> BTreeMap<String, TrainerProgress> {
    let p = TrainerProgress {
        step,
        reward_mean: reward,
    };
    BTreeMap::from([("sft".to_string(), p), ("ppo".to_string(), p)])
}

#[test]
fn progress_reaches_the_status_and_a_stalled_gang_is_restarted() {
    let mut v = spec();
    v["runPolicy"] = json!({"progressDeadlineSeconds": 60});
    let job = validated(v);
    let gangs = pods(&[("sft", Running), ("rm", Running)]);
    let running = history(&job, &[vec![], gangs.clone()]);
    let none = BTreeSet::new();
    let d = decide_with(
        &job,
        &running.status,
        &gangs,
        10,
        &progress(7, Some(0.5)),
        &none,
    );
    let sft = &d.status.stages[0];
    assert_eq!(
        (
            sft.last_step,
            sft.last_reward,
            sft.last_progress_time.clone()
        ),
        (Some(7), None, Some(Time(at(10)))),
        "only PPO has a reward"
    );
    assert_eq!((d.status.last_step, d.status.last_reward), (Some(7), None));
    assert_eq!(
        d.wake_at,
        Some(at(10 + PROGRESS_POLL_SECONDS)),
        "running stages are polled"
    );
    // The same step 60 s later is still within the deadline; 61 s is not.
    let same = decide_with(&job, &d.status, &gangs, 70, &progress(7, Some(0.5)), &none);
    assert_eq!(same.status.stages[0].phase, StagePhase::Running);
    let stalled = decide_with(
        &job,
        &same.status,
        &gangs,
        71,
        &progress(7, Some(0.5)),
        &none,
    );
    assert_eq!(
        (
            stalled.status.stages[0].phase,
            stalled.status.stages[0].restarts
        ),
        (StagePhase::Restarting, 1)
    );
    let message = stalled.status.stages[0].message.clone().unwrap();
    assert!(
        message.ends_with("no progress for 61s (progressDeadlineSeconds 60; last step 7)"),
        "{message}"
    );
    // rm never reported a step: its deadline counts from when it started running (second 1).
    assert_eq!(stalled.status.stages[1].phase, StagePhase::Restarting);
}

#[test]
fn ppo_reports_its_first_and_latest_reward() {
    let job = job();
    let done = history(
        &job,
        &[
            vec![],
            pods(&[("sft", Succeeded), ("rm", Succeeded)]),
            pods(&[("ppo", Running)]),
        ],
    );
    let none = BTreeSet::new();
    let before_any_step = decide_with(
        &job,
        &done.status,
        &pods(&[("ppo", Running)]),
        3,
        &progress(0, Some(0.0)),
        &none,
    );
    assert_eq!(
        before_any_step.status.stages[2].first_reward, None,
        "the gauge's initial 0 is no reward"
    );
    let first = decide_with(
        &job,
        &before_any_step.status,
        &pods(&[("ppo", Running)]),
        3,
        &progress(2, Some(-1.5)),
        &none,
    );
    let later = decide_with(
        &job,
        &first.status,
        &pods(&[("ppo", Running)]),
        8,
        &progress(9, Some(0.75)),
        &none,
    );
    let ppo = &later.status.stages[2];
    assert_eq!(
        (ppo.first_reward, ppo.last_reward, ppo.last_step),
        (Some(-1.5), Some(0.75), Some(9))
    );
    assert_eq!(
        (later.status.last_step, later.status.last_reward),
        (Some(9), Some(0.75))
    );
}

#[test]
fn an_admitted_gang_that_never_runs_is_requeued_without_counting_a_restart() {
    let mut v = spec();
    v["scheduling"] = json!({"timeoutSeconds": 30});
    let job = validated(v);
    let stuck = pods(&[("sft", Pending), ("rm", Pending)]);
    let d = history(&job, &[vec![], stuck.clone()]);
    assert_eq!(d.wake_at, Some(at(31)));
    let d = decide_at(&job, &d.status, &stuck, 31);
    let sft = &d.status.stages[0];
    assert_eq!(
        (sft.phase, sft.restarts, sft.gang_generation),
        (StagePhase::Restarting, 0, 1)
    );
    assert!(
        sft.message
            .as_deref()
            .unwrap()
            .starts_with("the gang was not fully Running 31s after it was admitted")
    );
    assert_eq!(
        d.transitions
            .iter()
            .filter(|t| t.reason == "GangTimeout")
            .count(),
        2,
        "one per stage"
    );
    assert_eq!(d.cleanup.get("sft"), Some(&Cleanup::All));
}

#[test]
fn queued_gangs_say_why_and_where_and_are_polled() {
    let job = job();
    let hashes = BTreeMap::new();
    let (no_progress, no_nodes) = (BTreeMap::new(), BTreeSet::new());
    let obs = Observed {
        generation: Some(1),
        pods: &[],
        desired_hashes: &hashes,
        progress: &no_progress,
        not_ready_nodes: &no_nodes,
        now: at(0),
    };
    let mut d = decide(&job, &RLHFJobStatus::default(), &obs);
    d.queued(
        "sft",
        2,
        "needs 2 pods x 1 GPUs; 0 of 8 GPUs free on 1 eligible nodes",
        at(0),
    );
    d.queued("rm", 3, "waiting behind team-a/other/sft", at(0));
    assert_eq!(d.launch, Vec::<String>::new());
    assert_eq!(d.status.phase, Some(JobPhase::Queued));
    assert_eq!(
        phases(&d.status)[..2],
        [("sft", StagePhase::Queued), ("rm", StagePhase::Queued)]
    );
    let cond = condition(&d.status, "Queued");
    assert_eq!(
        cond.message,
        "stage sft: position 2 in the gang queue: needs 2 pods x 1 GPUs; 0 of 8 GPUs free on 1 eligible nodes; \
         stage rm: position 3 in the gang queue: waiting behind team-a/other/sft"
    );
    assert_eq!(d.wake_at, Some(at(QUEUE_POLL_SECONDS)));
    // Next round the stages ask again; once admitted they are Pending and the condition clears.
    let again = decide_at(&job, &d.status, &[], 5);
    assert_eq!(launches(&again), ["sft", "rm"]);
    assert_eq!(
        phases(&again.status)[..2],
        [("sft", StagePhase::Pending), ("rm", StagePhase::Pending)]
    );
    assert_eq!(condition(&again.status, "Queued").status, "False");
    assert_eq!(again.status.stages[0].gang_start_time, Some(Time(at(5))));
    assert_eq!(again.status.stages[0].queued_since, None);
    let mut not_yet_admitted = decide(&job, &d.status, &obs);
    assert_eq!(
        not_yet_admitted.admitted("rm", at(12)),
        12.0,
        "queued since second 0"
    );
}

#[test]
fn deadlines_ttl_and_clean_pod_policy() {
    let mut v = spec();
    v["runPolicy"] = json!({"activeDeadlineSeconds": 100, "ttlSecondsAfterFinished": 50, "cleanPodPolicy": "All"});
    let job = validated(v);
    let gangs = pods(&[("sft", Running), ("rm", Succeeded)]);
    let d = history(&job, &[vec![], gangs.clone()]);
    assert_eq!(
        d.cleanup.get("rm"),
        Some(&Cleanup::All),
        "cleanPodPolicy All: a finished stage's pods go"
    );
    let late = decide_at(&job, &d.status, &gangs, 101);
    assert_eq!(
        (late.status.phase, late.status.stages[0].phase),
        (Some(JobPhase::Failed), StagePhase::Failed)
    );
    assert_eq!(
        condition(&late.status, "Failed").message,
        "stage sft: activeDeadlineSeconds (100s) exceeded"
    );
    assert!(!late.delete_job);
    assert!(!decide_at(&job, &late.status, &[], 150).delete_job);
    assert!(
        decide_at(&job, &late.status, &[], 151).delete_job,
        "ttlSecondsAfterFinished counts from completion (101)"
    );
}

#[test]
fn suspending_deletes_the_pods_and_resuming_starts_a_new_gang_generation() {
    let mut v = spec();
    v["runPolicy"] = json!({"suspend": true});
    let suspended = validated(v);
    let gangs = pods(&[("sft", Running), ("rm", Running)]);
    let running = history(&job(), &[vec![], gangs.clone()]);
    let d = decide_at(&suspended, &running.status, &gangs, 2);
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Suspended),
            ("rm", StagePhase::Suspended),
            ("ppo", StagePhase::Waiting)
        ]
    );
    assert_eq!(d.cleanup.len(), 2);
    assert!(d.launch.is_empty());
    assert_eq!(condition(&d.status, "Suspended").status, "True");
    let resumed = decide_at(&job(), &d.status, &[], 3);
    assert_eq!(
        phases(&resumed.status)[..2],
        [("sft", StagePhase::Pending), ("rm", StagePhase::Pending)]
    );
    assert_eq!(
        (
            resumed.status.stages[0].gang_generation,
            resumed.status.stages[0].restarts
        ),
        (1, 0)
    );
    assert_eq!(launches(&resumed), ["sft", "rm"]);
}

/// sft's running gang was started from an older spec.
fn stale_round() -> Vec<ObservedPod> {
    let mut round = pods(&[("sft", Running), ("rm", Running)]);
    round[..2]
        .iter_mut()
        .for_each(|p| p.spec_hash = Some("old".into()));
    round
}

#[test]
fn a_spec_change_waits_for_running_stages() {
    let d = history(&job(), &[vec![], stale_round()]);
    assert!(d.launch.is_empty());
    assert_eq!(phases(&d.status)[0], ("sft", StagePhase::Running));
    let message = "stage(s) sft run with an earlier spec; the change applies to stages not started yet and to their next gang";
    assert_eq!(
        d.status.conditions,
        [true_condition(
            "SpecChangeDeferred",
            "StageAlreadyStarted",
            message,
            1
        )]
    );
}

#[test]
fn deciding_again_on_the_same_pods_changes_nothing() {
    let job = job();
    let first = history(&job, &[vec![], stale_round()]);
    let second = decide_at(&job, &first.status, &stale_round(), 60);
    // Same status (so no patch), the condition keeps its lastTransitionTime, no new events.
    assert_eq!(second.status, first.status);
    assert_eq!(
        condition(&second.status, "SpecChangeDeferred").last_transition_time,
        Time(at(1))
    );
    assert_eq!(second.transitions, []);

    let resolved = decide_at(
        &job,
        &second.status,
        &pods(&[("sft", Running), ("rm", Running)]),
        61,
    );
    let deferred = condition(&resolved.status, "SpecChangeDeferred");
    assert_eq!(
        (
            deferred.status.as_str(),
            deferred.reason.as_str(),
            deferred.message.as_str()
        ),
        ("False", "Resolved", "SpecChangeDeferred no longer applies")
    );
    assert_eq!(deferred.last_transition_time, Time(at(61)));
}

fn invalid(prev: &RLHFJobStatus, errors: &[FieldError], second: i64) -> JobPlan {
    let no_hashes = BTreeMap::new();
    let (no_progress, no_nodes) = (BTreeMap::new(), BTreeSet::new());
    decide_invalid(
        prev,
        errors,
        &Observed {
            generation: Some(4),
            pods: &[],
            desired_hashes: &no_hashes,
            progress: &no_progress,
            not_ready_nodes: &no_nodes,
            now: at(second),
        },
    )
}

#[test]
fn an_invalid_spec_is_reported_once() {
    let errors = [
        FieldError::new("spec.env[0].name", "MASTER_ADDR is set by the operator"),
        FieldError::new(
            "spec.scheduling.queue",
            "a queue only applies to gang: volcano",
        ),
    ];
    let message = "spec.env[0].name: MASTER_ADDR is set by the operator; spec.scheduling.queue: a queue only applies to gang: volcano";
    let d = invalid(&RLHFJobStatus::default(), &errors, 0);
    assert_eq!(d.status.phase, Some(JobPhase::Failed));
    assert_eq!(
        d.status.conditions,
        [true_condition("InvalidSpec", "InvalidSpec", message, 0)]
    );
    assert_eq!(
        d.transitions,
        [transition("Validate", "InvalidSpec", message, true)]
    );
    assert!(d.launch.is_empty());

    let again = invalid(&d.status, &errors, 30);
    assert_eq!(
        (&again.status, &again.transitions),
        (&d.status, &Vec::new())
    );

    let other = invalid(&d.status, &errors[1..], 31);
    assert_eq!(other.transitions.len(), 1);
    assert_eq!(
        condition(&other.status, "InvalidSpec").last_transition_time,
        Time(at(0))
    );

    // Fixing the spec resolves the condition and the job starts.
    let fixed = decide_at(&job(), &d.status, &[], 40);
    let cond = condition(&fixed.status, "InvalidSpec");
    assert_eq!(
        (
            cond.status.as_str(),
            cond.reason.as_str(),
            cond.last_transition_time.clone()
        ),
        ("False", "Resolved", Time(at(40)))
    );
    assert_eq!(
        (fixed.status.phase, launches(&fixed)),
        (Some(JobPhase::Pending), vec!["sft", "rm"])
    );

    // An edit that breaks a started job keeps its phase: its running gangs go on.
    let started = invalid(&fixed.status, &errors, 41);
    assert_eq!(
        (started.status.phase, started.status.stages.clone()),
        (Some(JobPhase::Pending), fixed.status.stages)
    );
}

#[test]
fn a_suspended_job_launches_nothing() {
    let mut v = spec();
    v["runPolicy"] = json!({"suspend": true});
    let suspended = validated(v);
    let d = history(&suspended, &[vec![]]);
    assert_eq!(
        phases(&d.status),
        [
            ("sft", StagePhase::Waiting),
            ("rm", StagePhase::Waiting),
            ("ppo", StagePhase::Waiting)
        ]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert_eq!((d.launch.len(), d.transitions.len()), (0, 0));

    // Suspended while running: the gangs are not topped up.
    let running = history(
        &job(),
        &[vec![], pods(&[("sft", Running), ("rm", Running)])],
    );
    let d = decide_at(
        &suspended,
        &running.status,
        &pods(&[("sft", Running), ("rm", Pending)]),
        2,
    );
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert!(d.launch.is_empty(), "{:?}", d.launch);
}
