//! End to end against the real API server: an RLHFJob becomes exactly the expected Service,
//! ConfigMap, PVC and pods; status follows the pods stage by stage; deleting the job deletes
//! everything it owned (garbage collector).
mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use rlhf_operator::crd::{JobPhase, StagePhase};
use rlhf_test_support::kubelet::{PodOutcome, register_node};
use rlhf_test_support::wait_until;

const JOB: &str = "helpful-assistant";
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    let c = &pod.spec.as_ref().unwrap().containers[0];
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn assert_gang(pods: &[Pod], ns: &str, stage: &str, uid: &str) {
    for (rank, pod) in pods.iter().enumerate() {
        let name = format!("{JOB}-{stage}-{rank}");
        assert_eq!(pod.name_any(), name);
        let labels = pod.labels();
        assert_eq!(labels["rlhf.dev/job"], JOB);
        assert_eq!(labels["rlhf.dev/stage"], stage);
        assert_eq!(labels["rlhf.dev/node-rank"], rank.to_string());
        assert_eq!(labels["rlhf.dev/gang-generation"], "0");
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("RLHFJob", JOB, uid, Some(true))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(
            spec.subdomain.as_deref(),
            Some(format!("{JOB}-{stage}").as_str())
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["rlhf-trainer".to_string(), "run".to_string()][..])
        );
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(res.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        let env = env_of(pod);
        let expected = [
            (
                "MASTER_ADDR",
                format!("{JOB}-{stage}-0.{JOB}-{stage}.{ns}.svc"),
            ),
            ("MASTER_PORT", "29500".into()),
            ("NNODES", "3".into()),
            ("NODE_RANK", rank.to_string()),
            ("LOCAL_WORLD_SIZE", "2".into()),
            ("WORLD_SIZE", "6".into()),
            ("RLHF_CONFIG", "/etc/rlhf/trainer.json".into()),
            ("RLHF_JOB", JOB.into()),
            ("RLHF_STAGE", stage.into()),
            ("RLHF_NAMESPACE", ns.into()),
            ("RLHF_METRICS_PORT", "9400".into()),
            ("EXTRA_SETTING", "on".into()),
        ];
        for (k, v) in expected {
            assert_eq!(env.get(k), Some(&v), "env {k} of {name}");
        }
        let claims: Vec<String> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.clone())
            })
            .collect();
        assert_eq!(claims, vec![format!("{JOB}-storage")]);
    }
}

async fn count<K>(client: &Client, ns: &str) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    list_labelled::<K>(client, ns, &format!("rlhf.dev/job={JOB}"))
        .await
        .len()
}

#[tokio::test]
async fn job_runs_stage_by_stage_and_is_garbage_collected() {
    let Scene {
        cluster,
        client,
        ns,
        operator: _operator,
    } = scene("lifecycle").await;

    let pool = GpuPool::create(&client, &ns, 3, 4).await;
    let mut manifest = pipeline_job(JOB, ["warmup", "prefs", "align"], 3, 2);
    manifest["spec"]["nodeSelector"] = serde_json::json!({POOL_LABEL: ns});
    manifest["spec"]["scheduling"] = serde_json::json!({"gang": "native"});
    let (ok, out) = kubectl_apply(&cluster, &ns, &manifest).await;
    assert!(ok, "kubectl apply failed: {out}");
    let uid = jobs(&client, &ns).get(JOB).await.unwrap().uid().unwrap();

    // SFT and RM start together; PPO waits for both.
    let warmup = wait_for_pods(&client, &ns, JOB, "warmup", 3).await;
    let prefs = wait_for_pods(&client, &ns, JOB, "prefs", 3).await;
    assert_gang(&warmup, &ns, "warmup", &uid);
    assert_gang(&prefs, &ns, "prefs", &uid);
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
    let spec = svc
        .get(&format!("{JOB}-warmup"))
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config = cms
        .get(&format!("{JOB}-prefs-config"))
        .await
        .unwrap()
        .data
        .unwrap();
    let trainer: rlhf_spec::TrainerConfig =
        serde_json::from_str(&config["trainer.json"]).expect("trainer.json parses");
    assert_eq!(trainer.output_dir, format!("/rlhf/{ns}/{JOB}/prefs"));
    assert_eq!(trainer.stage.parallelism.world_size(), 6);
    // The trainer binary itself accepts what the operator rendered.
    let path = std::env::temp_dir().join(format!("{ns}-trainer.json"));
    std::fs::write(&path, &config["trainer.json"]).unwrap();
    let check = std::process::Command::new(rlhf_test_support::operator::workspace_binary(
        "rlhf-trainer",
    ))
    .args(["check-config", path.to_str().unwrap()])
    .output()
    .unwrap();
    assert!(
        check.status.success(),
        "rlhf-trainer check-config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains("stage prefs (rm): 3 nodes x 2 GPUs = world 6")
    );
    assert_eq!(
        (
            count::<Service>(&client, &ns).await,
            count::<ConfigMap>(&client, &ns).await
        ),
        (2, 2)
    );
    assert_eq!(count::<PersistentVolumeClaim>(&client, &ns).await, 1);
    assert_eq!(
        count::<Pod>(&client, &ns).await,
        6,
        "no pods for align before its dependencies succeed"
    );
    // The real scheduler places both gangs: 6 pods x 2 GPUs fill the 3 nodes x 4 GPUs exactly.
    let placed = wait_for_placement(&client, &ns, 6).await;
    assert_eq!(
        placed.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4],
        "GPUs requested per node: {placed:?}"
    );

    set_all(&client, &ns, &warmup, PodOutcome::Running).await;
    let status = wait_for_status(&client, &ns, JOB, "warmup Running", |s| {
        stage_phase(s, "warmup") == Some(StagePhase::Running)
    })
    .await;
    assert_eq!(status.phase, Some(JobPhase::Running));
    set_all(&client, &ns, &prefs, PodOutcome::Running).await;
    set_all(&client, &ns, &warmup, PodOutcome::Succeeded).await;
    let status = wait_for_status(&client, &ns, JOB, "warmup Succeeded", |s| {
        stage_phase(s, "warmup") == Some(StagePhase::Succeeded)
    })
    .await;
    assert_eq!(stage_phase(&status, "align"), Some(StagePhase::Waiting));
    assert!(status.stages[0].completion_time.is_some());

    set_all(&client, &ns, &prefs, PodOutcome::Succeeded).await;
    let align = wait_for_pods(&client, &ns, JOB, "align", 3).await;
    assert_gang(&align, &ns, "align", &uid);
    wait_for_placement(&client, &ns, 9).await; // finished pods free their GPUs
    set_all(&client, &ns, &align, PodOutcome::Running).await;
    wait_for_status(&client, &ns, JOB, "align Running", |s| {
        s.current_stage.as_deref() == Some("align") && s.phase == Some(JobPhase::Running)
    })
    .await;
    set_all(&client, &ns, &align, PodOutcome::Succeeded).await;
    let done = wait_for_status(&client, &ns, JOB, "job Succeeded", |s| {
        s.phase == Some(JobPhase::Succeeded)
    })
    .await;
    assert!(done.completion_time.is_some());
    assert_eq!(
        condition(&done, "Succeeded").map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(done.stages.iter().all(|s| s.phase == StagePhase::Succeeded));

    jobs(&client, &ns)
        .delete(JOB, &DeleteParams::foreground())
        .await
        .unwrap();
    // The garbage collector learns about a newly installed CRD at its next discovery resync
    // (every 30 s), so on a fresh control plane this can take that long.
    wait_until(
        "every owned object to be garbage collected",
        GC_WAIT,
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let left = count::<Pod>(&client, &ns).await
                    + count::<Service>(&client, &ns).await
                    + count::<ConfigMap>(&client, &ns).await
                    + count::<PersistentVolumeClaim>(&client, &ns).await;
                if left == 0 {
                    Ok(Some(()))
                } else {
                    Err(format!("{left} objects left"))
                }
            }
        },
    )
    .await;
    pool.delete(&client).await;
}

const POOL_LABEL: &str = "rlhf.dev/test-pool";

/// Fake GPU nodes only this test's pods select, and a volume pre-bound to the job's claim.
struct GpuPool {
    nodes: Vec<String>,
    volume: String,
}

impl GpuPool {
    async fn create(client: &Client, ns: &str, nodes: u32, gpus: u32) -> Self {
        let labels = BTreeMap::from([(POOL_LABEL.to_string(), ns.to_string())]);
        let names: Vec<String> = (0..nodes).map(|i| format!("{ns}-node-{i}")).collect();
        for name in &names {
            register_node(client, name, gpus, labels.clone())
                .await
                .expect("registering a fake node");
        }
        let volume: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{ns}-storage")},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                     "hostPath": {"path": format!("/tmp/{ns}")},
                     "claimRef": {"namespace": ns, "name": format!("{JOB}-storage")}}
        }))
        .unwrap();
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        volumes
            .create(&PostParams::default(), &volume)
            .await
            .expect("creating the volume");
        Self {
            nodes: names,
            volume: volume.name_any(),
        }
    }

    async fn delete(&self, client: &Client) {
        let nodes: Api<Node> = Api::all(client.clone());
        for n in &self.nodes {
            nodes
                .delete(n, &DeleteParams::default())
                .await
                .expect("deleting a fake node");
        }
        Api::<PersistentVolume>::all(client.clone())
            .delete(&self.volume, &DeleteParams::default())
            .await
            .expect("deleting the volume");
    }
}

/// Waits until `count` pods of the job are bound to nodes; returns GPUs requested per node by
/// pods that still hold them (not finished).
async fn wait_for_placement(client: &Client, ns: &str, count: usize) -> BTreeMap<String, u32> {
    wait_until(
        &format!("{count} pods bound by the scheduler"),
        WAIT,
        || async move {
            let all = list_labelled::<Pod>(client, ns, &format!("rlhf.dev/job={JOB}")).await;
            let bound: Vec<&Pod> = all
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .collect();
            if bound.len() < count {
                return Err(format!("{} of {count} bound", bound.len()));
            }
            let mut gpus = BTreeMap::new();
            for p in bound.iter().filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            }) {
                let spec = p.spec.as_ref().unwrap();
                let want: u32 = spec.containers[0]
                    .resources
                    .as_ref()
                    .unwrap()
                    .limits
                    .as_ref()
                    .unwrap()["nvidia.com/gpu"]
                    .0
                    .parse()
                    .unwrap();
                *gpus.entry(spec.node_name.clone().unwrap()).or_insert(0) += want;
            }
            Ok(Some(gpus))
        },
    )
    .await
}
