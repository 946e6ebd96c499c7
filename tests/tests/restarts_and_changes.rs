//! Crash safety, idempotency and spec changes, against the real API server.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rlhf_operator::crd::StagePhase;
use rlhf_test_support::kubelet::PodOutcome;
use rlhf_test_support::{OperatorProcess, TestCluster, wait_until};
use serde_json::json;

/// name -> what the operator last did to each object of the job, of one kind: the object's uid
/// (a re-creation changes it) and the operator's managed-fields entries (any write of the
/// operator's changes their time or fields). Not the resourceVersion: the scheduler updates
/// pending pods' conditions on its own whenever the cluster's nodes change.
async fn versions<K>(client: &Client, ns: &str, job: &str) -> BTreeMap<String, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let list = list_labelled::<K>(client, ns, &format!("rlhf.dev/job={job}")).await;
    let operators = |o: &K| -> Vec<String> {
        let entries = o
            .meta()
            .managed_fields
            .iter()
            .flatten()
            .filter(|f| f.manager.as_deref() == Some(rlhf_operator::names::FIELD_MANAGER));
        entries
            .map(|f| serde_json::to_string(f).expect("managed fields serialize"))
            .collect()
    };
    list.iter()
        .map(|o| {
            (
                o.name_any(),
                format!("{} {:?}", o.uid().unwrap_or_default(), operators(o)),
            )
        })
        .collect()
}

async fn snapshot(client: &Client, ns: &str, job: &str) -> [BTreeMap<String, String>; 3] {
    [
        versions::<Pod>(client, ns, job).await,
        versions::<Service>(client, ns, job).await,
        versions::<ConfigMap>(client, ns, job).await,
    ]
}

#[tokio::test]
async fn killing_the_operator_mid_reconcile_creates_no_duplicates_and_reconcile_is_idempotent() {
    let cluster = TestCluster::connect().await;
    let client = cluster.client.clone();
    let ns = cluster.namespace("crash").await;
    const JOB: &str = "big-gang";
    // Two stages of 24 pods each start at once: plenty of API calls to interrupt.
    let (ok, out) = kubectl_apply(
        &cluster,
        &ns,
        &pipeline_job(JOB, ["sft", "rm", "ppo"], 24, 1),
    )
    .await;
    assert!(ok, "{out}");

    // Kill it at different moments: before, during and after pod creation.
    let pods_api = pods(&client, &ns);
    for delay_ms in [0u64, 150, 300, 600] {
        let mut operator = OperatorProcess::start(&cluster.kubeconfig, &ns);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        operator.kill().await;
        let n = pods_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        eprintln!("killed the operator after {delay_ms} ms with {n} pods created");
    }
    let _operator = OperatorProcess::start(&cluster.kubeconfig, &ns);
    let sft = wait_for_pods(&client, &ns, JOB, "sft", 24).await;
    let rm = wait_for_pods(&client, &ns, JOB, "rm", 24).await;
    let expected: Vec<String> = (0..24).map(|r| format!("{JOB}-sft-{r}")).collect();
    let mut names: Vec<String> = sft.iter().map(|p| p.name_any()).collect();
    names.sort_by_key(|n| n.rsplit('-').next().unwrap().parse::<u32>().unwrap());
    assert_eq!(names, expected);
    assert_eq!(rm.len(), 24);
    let hashes: std::collections::BTreeSet<_> = sft
        .iter()
        .map(|p| p.annotations()["rlhf.dev/spec-hash"].clone())
        .collect();
    assert_eq!(
        hashes.len(),
        1,
        "every pod of a gang is built from the same spec"
    );
    wait_for_status(&client, &ns, JOB, "status recorded", |s| {
        stage_phase(s, "sft") == Some(StagePhase::Pending)
    })
    .await;

    // Idempotency: another reconcile (an annotation change triggers one) writes nothing.
    let before = snapshot(&client, &ns, JOB).await;
    let status_before = jobs(&client, &ns).get(JOB).await.unwrap().status;
    let touch = json!({"metadata": {"annotations": {"test/touched": "yes"}}});
    jobs(&client, &ns)
        .patch(JOB, &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        snapshot(&client, &ns, JOB).await,
        before,
        "a second reconcile must not rewrite any object"
    );
    assert_eq!(
        jobs(&client, &ns).get(JOB).await.unwrap().status,
        status_before,
        "nor the status"
    );
}

#[tokio::test]
async fn spec_changes_defer_for_running_stages_and_removed_stages_are_cleaned_up() {
    let Scene {
        cluster,
        client,
        ns,
        operator: _operator,
    } = scene("changes").await;
    const JOB: &str = "evolving";
    let mut manifest = pipeline_job(JOB, ["sft", "rm", "ppo"], 2, 1);
    let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
    assert!(ok, "{out}");
    let sft = wait_for_pods(&client, &ns, JOB, "sft", 2).await;
    set_all(&client, &ns, &sft, PodOutcome::Running).await;
    wait_for_status(&client, &ns, JOB, "sft Running", |s| {
        stage_phase(s, "sft") == Some(StagePhase::Running)
    })
    .await;
    let before = versions::<Pod>(&client, &ns, JOB).await;

    // Changing a running stage: its gang is left alone and the status says so.
    manifest["spec"]["stages"][0]["training"]["learningRate"] = json!(0.0003);
    let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
    assert!(ok, "{out}");
    let status = wait_for_status(&client, &ns, JOB, "SpecChangeDeferred", |s| {
        condition(s, "SpecChangeDeferred").is_some_and(|c| c.status == "True")
    })
    .await;
    assert!(
        condition(&status, "SpecChangeDeferred")
            .unwrap()
            .message
            .contains("sft")
    );
    assert_eq!(
        versions::<Pod>(&client, &ns, JOB).await,
        before,
        "running pods are not touched"
    );
    assert_eq!(stage_phase(&status, "sft"), Some(StagePhase::Running));

    // Removing a stage that has objects deletes them (rm had a gang, ppo depended on it).
    let stages = manifest["spec"]["stages"].as_array_mut().unwrap();
    stages.remove(1);
    stages[1]["dependsOn"] = json!(["sft"]);
    stages[1]["models"]["rewardModel"] = json!({"path": "/models/reward"});
    let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
    assert!(ok, "{out}");
    wait_until("the removed stage's objects to be deleted", WAIT, || {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let selector = format!("rlhf.dev/job={JOB},rlhf.dev/stage=rm");
            let pods = list_labelled::<Pod>(&client, &ns, &selector).await.len();
            let svcs = list_labelled::<Service>(&client, &ns, &selector)
                .await
                .len();
            let cms = list_labelled::<ConfigMap>(&client, &ns, &selector)
                .await
                .len();
            if pods + svcs + cms == 0 {
                Ok(Some(()))
            } else {
                Err(format!(
                    "{pods} pods, {svcs} services, {cms} configmaps left"
                ))
            }
        }
    })
    .await;
    let status = wait_for_status(&client, &ns, JOB, "rm gone from status", |s| {
        stage_phase(s, "rm").is_none()
    })
    .await;
    assert_eq!(
        status
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["sft", "ppo"]
    );
}
