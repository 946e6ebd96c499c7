//! Helpers shared by the end-to-end tests: manifests, typed APIs and waits on job state.
#![allow(dead_code)] // each test binary uses a different subset

pub mod training;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rlhf_operator::crd::{JobPhase, RLHFJob, RLHFJobStatus, StagePhase};
use rlhf_test_support::kubelet::{PodOutcome, set_pod};
use rlhf_test_support::{OperatorProcess, TestCluster, wait_until};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(30);

/// A test's world: the cluster, a fresh namespace, and an operator watching only that namespace.
pub struct Scene {
    pub cluster: TestCluster,
    pub client: Client,
    pub ns: String,
    pub operator: OperatorProcess,
}

pub async fn scene(prefix: &str) -> Scene {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace(prefix).await;
    let operator = OperatorProcess::start(&cluster.kubeconfig, &ns);
    Scene {
        client: cluster.client.clone(),
        cluster,
        ns,
        operator,
    }
}

/// Objects of kind K in `ns` matching a label selector.
pub async fn list_labelled<K>(client: &Client, ns: &str, selector: &str) -> Vec<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("listing objects")
        .items
}

/// A three-stage pipeline (two independent stages, then a ppo stage on both) on a tiny random gpt2.
pub fn pipeline_job(name: &str, stages: [&str; 3], nodes: u32, gpus_per_node: u32) -> Value {
    let [first, second, third] = stages;
    let synthetic = json!({"synthetic": {"task": "copy", "samples": 64}});
    // Two accumulation steps of 4 examples per rank.
    let batch = 4 * nodes * gpus_per_node * 2;
    rlhf_job(
        name,
        json!({
            "model": {"family": "gpt2", "init": "random",
                      "architecture": {"vocabSize": 50257, "hiddenSize": 64, "numLayers": 2, "numHeads": 4, "maxPositions": 128}},
            "parallelism": {"nodes": nodes, "gpusPerNode": gpus_per_node},
            "storage": {"accessModes": ["ReadWriteMany"], "size": "2Gi"},
            "env": [{"name": "EXTRA_SETTING", "value": "on"}],
            // No GPU nodes unless a test registers some: gangs are not held back for capacity.
            "scheduling": {"gang": "none"},
            "stages": [
                {"name": first, "kind": "sft", "dataset": synthetic, "training": {"batchSize": batch, "microBatchSize": 4, "maxLength": 64}},
                {"name": second, "kind": "rm", "dataset": synthetic, "training": {"batchSize": batch, "microBatchSize": 4, "maxLength": 64}},
                {"name": third, "kind": "ppo", "dependsOn": [first, second], "dataset": synthetic,
                 "models": {"init": {"stage": first}, "rewardModel": {"stage": second}},
                 "training": {"batchSize": batch, "microBatchSize": 4, "maxLength": 64}, "rl": {"generation": {"maxNewTokens": 16}}}
            ]
        }),
    )
}

/// An RLHFJob manifest named `name` with `spec` and the tests' image (the node agent runs
/// `rlhf-trainer` from the build; the image name is never pulled).
pub fn rlhf_job(name: &str, mut spec: Value) -> Value {
    spec["image"] = json!("registry.example/rlhf-trainer:test");
    json!({"apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob", "metadata": {"name": name}, "spec": spec})
}

pub async fn kubectl_apply(cluster: &TestCluster, ns: &str, manifest: &Value) -> (bool, String) {
    cluster
        .kubectl(&["apply", "-n", ns, "-f", "-"], &manifest.to_string())
        .await
}

pub fn jobs(client: &Client, ns: &str) -> Api<RLHFJob> {
    Api::namespaced(client.clone(), ns)
}

pub fn pods(client: &Client, ns: &str) -> Api<Pod> {
    Api::namespaced(client.clone(), ns)
}

/// Names of the pods of `stage` (sorted), waiting until there are exactly `count`.
pub async fn wait_for_pods(
    client: &Client,
    ns: &str,
    job: &str,
    stage: &str,
    count: usize,
) -> Vec<Pod> {
    let api = pods(client, ns);
    let selector = format!("rlhf.dev/job={job},rlhf.dev/stage={stage}");
    wait_until(&format!("{count} pods of stage {stage}"), WAIT, || {
        let (api, selector) = (api.clone(), selector.clone());
        async move {
            let mut list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            list.sort_by_key(|p| p.name_any());
            Ok((list.len() == count).then_some(list))
        }
    })
    .await
}

pub async fn set_all(client: &Client, ns: &str, pods: &[Pod], outcome: PodOutcome) {
    let api = self::pods(client, ns);
    for p in pods {
        set_pod(&api, &p.name_any(), outcome)
            .await
            .expect("writing pod status");
    }
}

/// Waits until the job's status satisfies `check`, returning it.
pub async fn wait_for_status(
    client: &Client,
    ns: &str,
    job: &str,
    what: &str,
    check: impl Fn(&RLHFJobStatus) -> bool,
) -> RLHFJobStatus {
    wait_for_status_within(client, ns, job, what, WAIT, check).await
}

/// As `wait_for_status`, with its own timeout; on timeout the panic shows the last status.
pub async fn wait_for_status_within(
    client: &Client,
    ns: &str,
    job: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&RLHFJobStatus) -> bool,
) -> RLHFJobStatus {
    let api = jobs(client, ns);
    wait_until(what, timeout, || {
        let api = api.clone();
        let check = &check;
        async move {
            let status = api
                .get(job)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if check(&status) {
                Ok(Some(status))
            } else {
                Err(format!(
                    "status now: {}",
                    serde_json::to_string(&status).unwrap_or_default()
                ))
            }
        }
    })
    .await
}

pub fn stage_phase(status: &RLHFJobStatus, stage: &str) -> Option<StagePhase> {
    status
        .stages
        .iter()
        .find(|s| s.name == stage)
        .map(|s| s.phase)
}

pub fn job_phase(status: &RLHFJobStatus) -> Option<JobPhase> {
    status.phase
}

pub fn condition<'a>(
    status: &'a RLHFJobStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}
