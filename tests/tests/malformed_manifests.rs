//! Malformed RLHFJobs: the schema rejects what it can at `kubectl apply`; the operator marks the
//! rest InvalidSpec (condition, Event, no pods) and keeps serving valid jobs.
mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

/// A valid single-node job, then `edit` applied to it.
fn job(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut v = pipeline_job(name, ["sft", "rm", "ppo"], 1, 1);
    edit(&mut v);
    v
}

/// Manifests the OpenAPI schema rejects, with a piece of kubectl's error ('|' separates
/// alternatives: kubectl validates required fields itself once the API server publishes the
/// CRD's schema, and then words the error differently).
fn schema_rejections() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "unknown stage kind",
            job("bad-kind", |v| {
                v["spec"]["stages"][0]["kind"] = json!("ppo2")
            }),
            "spec.stages.kind",
        ),
        (
            "missing image",
            job("no-image", |v| {
                v["spec"].as_object_mut().unwrap().remove("image");
            }),
            "spec.image: Required value|missing required field \"image\"",
        ),
        (
            "zero nodes",
            job("zero-nodes", |v| {
                v["spec"]["parallelism"]["nodes"] = json!(0)
            }),
            "spec.parallelism.nodes",
        ),
        (
            "stage name not a DNS label",
            job("bad-stage-name", |v| {
                v["spec"]["stages"][1]["name"] = json!("Reward_Model")
            }),
            "spec.stages.name",
        ),
        (
            "learning rate above 1",
            job("big-lr", |v| {
                v["spec"]["stages"][0]["training"]["learningRate"] = json!(3.0)
            }),
            "spec.stages.training.learningRate",
        ),
        (
            "unknown model family",
            job("bad-family", |v| {
                v["spec"]["model"]["family"] = json!("bert")
            }),
            "spec.model.family",
        ),
        (
            "privileged metrics port",
            job("low-port", |v| v["spec"]["metrics"] = json!({"port": 80})),
            "spec.metrics.port",
        ),
        (
            "no stages",
            job("no-stages", |v| v["spec"]["stages"] = json!([])),
            "spec.stages",
        ),
        (
            "duplicate stage names",
            job("dup-stage", |v| {
                v["spec"]["stages"][1]["name"] = json!("sft")
            }),
            "spec.stages[1]: Duplicate value",
        ),
    ]
}

/// Manifests only the operator can judge, with a piece of the InvalidSpec message.
fn operator_rejections() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "dependsOn cycle",
            job("cycle", |v| {
                v["spec"]["stages"][0]["dependsOn"] = json!(["ppo"])
            }),
            "dependsOn forms a cycle",
        ),
        (
            "unknown dependency",
            job("unknown-dep", |v| {
                v["spec"]["stages"][1]["dependsOn"] = json!(["pretrain"])
            }),
            "spec.stages[1].dependsOn[0]: unknown stage \"pretrain\"",
        ),
        // Without rewardModel a ppo stage takes the one rm stage it depends on; here it depends on none.
        (
            "ppo without reward model",
            job("no-rm", |v| {
                v["spec"]["stages"][2]["models"]
                    .as_object_mut()
                    .unwrap()
                    .remove("rewardModel");
                v["spec"]["stages"][2]["dependsOn"] = json!(["sft"]);
            }),
            "spec.stages[2].rewards: a ppo stage needs a reward",
        ),
        (
            "queue without volcano",
            job("stray-queue", |v| {
                v["spec"]["scheduling"] = json!({"queue": "research"})
            }),
            "spec.scheduling.queue: a queue only applies to gang: volcano",
        ),
        (
            "gpu request disagrees",
            job("gpu-mismatch", |v| {
                v["spec"]["resources"] = json!({"limits": {"nvidia.com/gpu": "4"}})
            }),
            "spec.resources.limits[nvidia.com/gpu]: 4 disagrees with gpusPerNode 1",
        ),
        (
            "batch not divisible",
            job("bad-batch", |v| {
                v["spec"]["stages"][0]["training"]["batchSize"] = json!(6)
            }),
            "spec.stages[0].training.batchSize: 6 is not a multiple",
        ),
        (
            "reserved env",
            job("reserved-env", |v| {
                v["spec"]["env"] = json!([{"name": "WORLD_SIZE", "value": "1"}])
            }),
            "spec.env[0].name: WORLD_SIZE is set by the operator",
        ),
        (
            "multi-node on ReadWriteOnce",
            job("rwo-multinode", |v| {
                v["spec"]["storage"] = json!({"size": "1Gi"});
                v["spec"]["parallelism"]["nodes"] = json!(2);
                v["spec"]["stages"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .for_each(|s| s["training"]["batchSize"] = json!(16));
            }),
            "cannot share a ReadWriteOnce volume",
        ),
        (
            "mount on an unknown volume",
            job("bad-mount", |v| {
                v["spec"]["volumeMounts"] = json!([{"name": "datasets", "mountPath": "/data"}])
            }),
            "spec.volumeMounts[0].name: no volume named \"datasets\"",
        ),
        (
            "reward model from an sft stage",
            job("rm-from-sft", |v| {
                v["spec"]["stages"][2]["models"]["rewardModel"] = json!({"stage": "sft"})
            }),
            "is a sft stage, which cannot provide this model",
        ),
    ]
}

#[tokio::test]
async fn malformed_jobs_are_rejected_and_valid_jobs_still_run() {
    let Scene {
        cluster,
        client,
        ns,
        operator: _operator,
    } = scene("malformed").await;

    for (what, manifest, expected) in schema_rejections() {
        let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
        assert!(!ok, "{what}: kubectl apply should have failed, said: {out}");
        assert!(
            expected.split('|').any(|e| out.contains(e)),
            "{what}: expected {expected:?} in kubectl's error, got: {out}"
        );
    }
    for (what, manifest, _) in operator_rejections() {
        let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
        assert!(
            ok,
            "{what}: the schema cannot judge this one, kubectl apply should pass: {out}"
        );
    }
    for (what, manifest, expected) in operator_rejections() {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        let status = wait_for_status(
            &client,
            &ns,
            &name,
            &format!("InvalidSpec on {what}"),
            |s| condition(s, "InvalidSpec").is_some_and(|c| c.status == "True"),
        )
        .await;
        let message = &condition(&status, "InvalidSpec").unwrap().message;
        assert!(
            message.contains(expected),
            "{what}: expected {expected:?} in {message:?}"
        );
        assert_eq!(
            status.phase,
            Some(rlhf_operator::crd::JobPhase::Failed),
            "{what}"
        );
    }

    // The operator is still serving: a valid job gets its gang.
    let (ok, out) = kubectl_apply(&cluster, &ns, &job("healthy", |_| {})).await;
    assert!(ok, "{out}");
    wait_for_pods(&client, &ns, "healthy", "sft", 1).await;
    wait_for_pods(&client, &ns, "healthy", "rm", 1).await;

    let all_pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        all_pods
            .items
            .iter()
            .all(|p| p.metadata.name.as_deref().unwrap().starts_with("healthy-")),
        "invalid jobs must have no pods"
    );
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let invalid_events = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .count();
    assert_eq!(
        invalid_events,
        operator_rejections().len(),
        "one InvalidSpec event per invalid job"
    );
}
