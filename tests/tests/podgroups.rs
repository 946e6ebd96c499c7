//! Gang admission through a batch scheduler, against the real API server: a job with
//! `gang: volcano` or `gang: coscheduling` gets one PodGroup per launched stage (the scheduler's
//! API, installed here from stand-in CRDs under tests/fixtures/) and pods addressed to that
//! scheduler and naming their group. No such scheduler runs here, so the pods stay Pending.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::{Client, ResourceExt};
use rlhf_test_support::wait_until;
use serde_json::{Value, json};

fn pod_groups(client: &Client, ns: &str, group: &str, version: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: "PodGroup".into(),
        plural: "podgroups".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn wait_for_pod_group(api: &Api<DynamicObject>, name: &str) -> DynamicObject {
    wait_until(&format!("PodGroup {name}"), WAIT, || {
        let api = api.clone();
        async move { api.get_opt(name).await.map_err(|e| e.to_string()) }
    })
    .await
}

/// The group is owned (as controller) by the job, so it goes with it.
fn assert_owned_by_job(group: &DynamicObject, job: &str, uid: &str) {
    let owners = group.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let owner = &owners[0];
    assert_eq!(
        (
            owner.api_version.as_str(),
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("rlhf.dev/v1alpha1", "RLHFJob", job, uid, Some(true))
    );
    assert_eq!(
        group.labels().get("rlhf.dev/job").map(String::as_str),
        Some(job)
    );
}

fn scheduler_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref())
}

async fn job_uid(client: &Client, ns: &str, job: &str) -> String {
    jobs(client, ns)
        .get(job)
        .await
        .expect("the job exists")
        .uid()
        .expect("a stored job has a uid")
}

/// A two-node, two-GPU pipeline (sft + rm, then ppo) with `scheduling` and CPU/memory requests.
fn job_manifest(name: &str, scheduling: Value) -> Value {
    let mut manifest = pipeline_job(name, ["sft", "rm", "ppo"], 2, 2);
    manifest["spec"]["scheduling"] = scheduling;
    manifest["spec"]["resources"] = json!({"requests": {"cpu": "750m", "memory": "3Gi"}});
    manifest
}

/// Both gang pods' worth of requests: 2 x (2 GPUs, 750m CPU, 3Gi).
fn gang_resources() -> Value {
    json!({"cpu": "1500m", "memory": "6Gi", "nvidia.com/gpu": "4"})
}

/// One batch scheduler: the job that asks for it, its PodGroup API, and how its pods are marked.
struct Case {
    job: &'static str,
    scheduling: Value,
    group: &'static str,
    version: &'static str,
    /// `spec` fields beyond minMember and minResources.
    extra_spec: Value,
    scheduler_name: &'static str,
    /// (key, is a label): where a pod names its PodGroup; the other map must not have it.
    member_key: (&'static str, bool),
}

fn cases() -> [Case; 2] {
    [
        Case {
            job: "vc",
            scheduling: json!({"gang": "volcano", "queue": "research"}),
            group: "scheduling.volcano.sh",
            version: "v1beta1",
            extra_spec: json!({"queue": "research"}),
            scheduler_name: "volcano",
            member_key: ("scheduling.k8s.io/group-name", false),
        },
        Case {
            job: "cs",
            scheduling: json!({"gang": "coscheduling", "timeoutSeconds": 120}),
            group: "scheduling.x-k8s.io",
            version: "v1alpha1",
            extra_spec: json!({"scheduleTimeoutSeconds": 120}),
            scheduler_name: "scheduler-plugins-scheduler",
            member_key: ("scheduling.x-k8s.io/pod-group", true),
        },
    ]
}

/// Applies the case's job and checks the PodGroups and pods of its two launched stages.
async fn check_case(scene: &Scene, case: &Case) -> Api<DynamicObject> {
    let Scene {
        cluster,
        client,
        ns,
        ..
    } = scene;
    let (ok, out) = kubectl_apply(
        cluster,
        ns,
        &job_manifest(case.job, case.scheduling.clone()),
    )
    .await;
    assert!(ok, "kubectl apply: {out}");
    let uid = job_uid(client, ns, case.job).await;
    let api = pod_groups(client, ns, case.group, case.version);
    let mut expected = json!({"minMember": 2, "minResources": gang_resources()});
    for (k, v) in case
        .extra_spec
        .as_object()
        .expect("extra spec is an object")
    {
        expected[k] = v.clone();
    }
    let (key, is_label) = case.member_key;
    for stage in ["sft", "rm"] {
        let name = format!("{}-{stage}", case.job);
        let group = wait_for_pod_group(&api, &name).await;
        assert_owned_by_job(&group, case.job, &uid);
        assert_eq!(group.data["spec"], expected, "spec of PodGroup {name}");
        for pod in wait_for_pods(client, ns, case.job, stage, 2).await {
            assert_eq!(
                scheduler_of(&pod),
                Some(case.scheduler_name),
                "schedulerName of {}",
                pod.name_any()
            );
            let (marked, other) = if is_label {
                (pod.labels(), pod.annotations())
            } else {
                (pod.annotations(), pod.labels())
            };
            assert_eq!(marked.get(key), Some(&name), "{key} of {}", pod.name_any());
            assert!(
                !other.contains_key(key),
                "{key} of {} in the wrong map",
                pod.name_any()
            );
        }
    }
    api
}

#[tokio::test]
async fn batch_scheduled_gangs_get_pod_groups_and_pods_addressed_to_their_scheduler() {
    let scene = scene("podgroups").await;
    scene
        .cluster
        .install_pod_group_crds()
        .await
        .expect("installing the PodGroup CRDs");
    let [volcano_case, coscheduling_case] = cases();
    // Volcano: PodGroup with the queue; pods name it in an annotation.
    let volcano = check_case(&scene, &volcano_case).await;
    // Coscheduling: PodGroup with the gang timeout; pods name it in a label.
    let coscheduling = check_case(&scene, &coscheduling_case).await;
    let Scene { client, ns, .. } = &scene;

    // Each job's groups live in its scheduler's API only, and only for launched stages:
    // ppo waits for sft and rm, which never run here (no scheduler binds their pods).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names =
        |groups: Vec<DynamicObject>| groups.iter().map(ResourceExt::name_any).collect::<Vec<_>>();
    let listed = |api: &Api<DynamicObject>| {
        let api = api.clone();
        async move {
            api.list(&Default::default())
                .await
                .expect("listing PodGroups")
                .items
        }
    };
    let mut in_volcano = names(listed(&volcano).await);
    let mut in_coscheduling = names(listed(&coscheduling).await);
    in_volcano.sort();
    in_coscheduling.sort();
    assert_eq!(
        (in_volcano, in_coscheduling),
        (
            vec!["vc-rm".to_string(), "vc-sft".into()],
            vec!["cs-rm".to_string(), "cs-sft".into()]
        )
    );
    let phases: BTreeMap<String, Option<String>> = list_labelled::<Pod>(client, ns, "rlhf.dev/job")
        .await
        .into_iter()
        .map(|p| (p.name_any(), p.status.and_then(|s| s.phase)))
        .collect();
    assert!(
        phases.values().all(|p| p.as_deref() == Some("Pending")),
        "{phases:?}"
    );

    // A stage removed from the spec takes its PodGroup with it; the others stay.
    let remove_rm_and_ppo = r#"[{"op": "remove", "path": "/spec/stages/2"}, {"op": "remove", "path": "/spec/stages/1"}]"#;
    let (ok, out) = scene
        .cluster
        .kubectl(
            &[
                "patch",
                "rlhfjob",
                "vc",
                "-n",
                ns,
                "--type=json",
                "-p",
                remove_rm_and_ppo,
            ],
            "",
        )
        .await;
    assert!(ok, "kubectl patch: {out}");
    wait_until("vc-rm's PodGroup deleted", WAIT, || {
        let volcano = volcano.clone();
        async move {
            volcano
                .get_opt("vc-rm")
                .await
                .map(|g| g.is_none().then_some(()))
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert!(
        volcano
            .get_opt("vc-sft")
            .await
            .expect("reading vc-sft")
            .is_some(),
        "the remaining stage's PodGroup went too"
    );
}
