//! End to end, the run policy's failure handling with the real trainer (see training_e2e.rs for
//! the bed): a deleted pod and a killed rank each cost one whole-gang restart, backoffLimit is never
//! exceeded, cleanPodPolicy All removes the failed stage's pods and ttlSecondsAfterFinished deletes
//! the finished job.
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::training::*;
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use nix::sys::signal::Signal;
use rlhf_operator::crd::{JobPhase, RLHFJobStatus, StagePhase};
use rlhf_test_support::wait_until;
use serde_json::json;

const STAGE_TIMEOUT: Duration = Duration::from_secs(300);
const TTL_SECONDS: u64 = 20;

/// Polls until the job has failed, recording every gang generation its pods carried meanwhile.
async fn wait_for_failure(
    scene: &TrainingScene,
    job: &str,
    generations: &mut BTreeSet<String>,
) -> RLHFJobStatus {
    let started = Instant::now();
    loop {
        for pod in scene.pods_of(job).await {
            generations.extend(pod.labels().get("rlhf.dev/gang-generation").cloned());
        }
        let status = jobs(&scene.client, &scene.ns)
            .get(job)
            .await
            .expect("the job")
            .status
            .unwrap_or_default();
        if status.phase == Some(JobPhase::Failed) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{job} did not fail: {status:?} (operator log {})",
            scene.operator.log.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn restarts_stop_at_the_backoff_limit_then_pods_are_cleaned_and_the_job_expires() {
    let scene = TrainingScene::start("e2e-backoff", 2, 1).await;
    let job = "flaky";
    // Far more steps than the test lets it run: only failures end it.
    let mut manifest = sft_job(job, 2, 20_000);
    manifest["spec"]["runPolicy"] =
        json!({"backoffLimit": 1, "cleanPodPolicy": "All", "ttlSecondsAfterFinished": TTL_SECONDS});
    let storage = scene.apply(manifest).await;
    let sft_dir = scene.stage_dir(&storage, job, "sft");

    // Generation 0 trains; deleting one of its pods (as an eviction would) restarts the whole gang.
    wait_for_step(&sft_dir, 2, STAGE_TIMEOUT).await;
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), &scene.ns);
    pods.delete("flaky-sft-1", &DeleteParams::default())
        .await
        .expect("deleting a pod");
    let restarting = scene
        .wait_for(job, "a gang restart", Duration::from_secs(60), |s| {
            stage(s, "sft").restarts == 1
        })
        .await;
    let message = stage(&restarting, "sft")
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("gang restart 1/1")
            && message.contains("1 of the gang's 2 pods were deleted or evicted"),
        "{message}"
    );

    // Generation 1 runs; killing its rank 0 spends the limit: the stage fails and no third gang starts.
    let running = |s: &RLHFJobStatus| {
        stage(s, "sft").phase == StagePhase::Running && stage(s, "sft").gang_generation == 1
    };
    scene
        .wait_for(job, "generation 1 running", STAGE_TIMEOUT, running)
        .await;
    scene.signal_pod("flaky-sft-0", Signal::SIGKILL);
    let mut generations = BTreeSet::new();
    let failed = wait_for_failure(&scene, job, &mut generations).await;
    let sft = stage(&failed, "sft");
    assert_eq!(
        (sft.phase, sft.restarts, sft.gang_generation),
        (StagePhase::Failed, 1, 1),
        "{sft:?}"
    );
    let why = condition(&failed, "Failed")
        .expect("a Failed condition")
        .message
        .clone();
    assert!(
        why.contains("flaky-sft-0")
            && why.contains("exit code 137")
            && why.contains("backoffLimit (1 gang restarts) reached"),
        "{why}"
    );

    // cleanPodPolicy All: the failed stage's pods go while the job itself is still there; then,
    // ttlSecondsAfterFinished after it failed, the job is deleted.
    wait_until(
        "cleanPodPolicy All to delete the pods",
        Duration::from_secs(TTL_SECONDS),
        || {
            let scene = &scene;
            async move {
                let left = scene.pods_of(job).await;
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(format!("pods left: {:?}", names(&left)))
                }
            }
        },
    )
    .await;
    assert!(
        jobs(&scene.client, &scene.ns)
            .get_opt(job)
            .await
            .unwrap()
            .is_some(),
        "the job went before its TTL"
    );
    let failed_at = failed.completion_time.expect("a completion time").0;
    let jobs_api = jobs(&scene.client, &scene.ns);
    wait_until(
        &format!("{job} deleted by its TTL"),
        Duration::from_secs(TTL_SECONDS + 40),
        || {
            let jobs_api = jobs_api.clone();
            async move {
                jobs_api
                    .get_opt(job)
                    .await
                    .map(|j| j.is_none().then_some(()))
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let lived = k8s_openapi::jiff::Timestamp::now()
        .duration_since(failed_at)
        .as_secs();
    assert!(
        lived >= TTL_SECONDS as i64,
        "deleted {lived}s after it failed, before its TTL of {TTL_SECONDS}s"
    );
    assert!(
        generations.iter().all(|g| g == "1"),
        "pods of generations {generations:?} after the second failure"
    );
}
