//! The end-to-end training bed: a namespace, GPU nodes played by `rlhf-node-agent` (which runs
//! the real `rlhf-trainer` in each pod), the operator, and hostPath storage bound by the real
//! persistentvolume-binder. Each scene's nodes carry a label only its jobs select, so scenes
//! running side by side never share GPUs.
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rlhf_operator::crd::{JobPhase, RLHFJobStatus, StageStatus};
use rlhf_test_support::node_agent::NodeAgentProcess;
use rlhf_test_support::{OperatorProcess, TestCluster, wait_until};
use serde_json::{Value, json};

use super::{rlhf_job, wait_for_status_within};

/// How long a whole training job may take.
pub const PIPELINE_TIMEOUT: Duration = Duration::from_secs(600);

pub const POOL_LABEL: &str = "rlhf-test/pool";

pub struct TrainingScene {
    pub cluster: TestCluster,
    pub client: Client,
    pub ns: String,
    /// Where this scene's storage volumes and the agent's pod folders live.
    pub dir: PathBuf,
    pub agent: NodeAgentProcess,
    pub operator: OperatorProcess,
}

impl TrainingScene {
    /// A namespace with `nodes` x `gpus` nodes of its own, and the operator watching it.
    pub async fn start(prefix: &str, nodes: u32, gpus: u32) -> Self {
        let cluster = TestCluster::connect().await;
        let ns = cluster.namespace(prefix).await;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e").join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        let agent = NodeAgentProcess::start(
            &cluster.kubeconfig,
            &dir.join("agent"),
            nodes,
            gpus,
            &ns,
            &[(POOL_LABEL, &ns)],
        );
        agent.wait_ready(&cluster.client).await;
        let operator = OperatorProcess::start(&cluster.kubeconfig, &ns);
        Self {
            client: cluster.client.clone(),
            cluster,
            ns,
            dir,
            agent,
            operator,
        }
    }

    /// A hostPath PersistentVolume reserved (claimRef) for `job`'s storage claim; returns its folder.
    pub async fn storage_for(&self, job: &str) -> PathBuf {
        let path = self.dir.join(format!("storage-{job}"));
        reserve_storage(&self.client, &self.ns, job, &path).await;
        path
    }

    /// Applies `manifest` with kubectl after pinning it to this scene's nodes and storage.
    pub async fn apply(&self, mut manifest: Value) -> PathBuf {
        let job = manifest["metadata"]["name"]
            .as_str()
            .expect("a named job")
            .to_string();
        manifest["spec"]["nodeSelector"] = json!({POOL_LABEL: self.ns});
        let storage = self.storage_for(&job).await;
        let (ok, out) = self
            .cluster
            .kubectl(&["apply", "-n", &self.ns, "-f", "-"], &manifest.to_string())
            .await;
        assert!(ok, "kubectl apply {job}: {out}");
        storage
    }

    /// Waits up to `timeout` until the job's status satisfies `check`; on timeout the panic
    /// message carries the status, and the operator and agent logs are named.
    pub async fn wait_for(
        &self,
        job: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&RLHFJobStatus) -> bool,
    ) -> RLHFJobStatus {
        let what = format!(
            "{job}: {what} (operator log {}, agent log {})",
            self.operator.log.display(),
            self.agent.log.display()
        );
        wait_for_status_within(&self.client, &self.ns, job, &what, timeout, check).await
    }

    /// Waits until `job` has Succeeded or Failed (PIPELINE_TIMEOUT); returns its status.
    pub async fn wait_until_finished(&self, job: &str) -> RLHFJobStatus {
        self.wait_for(job, "finished", PIPELINE_TIMEOUT, |s| {
            s.phase
                .is_some_and(|p| matches!(p, JobPhase::Succeeded | JobPhase::Failed))
        })
        .await
    }

    /// The job's pods now (any stage, any generation).
    pub async fn pods_of(&self, job: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default().labels(&format!("rlhf.dev/job={job}")))
            .await
            .expect("listing pods")
            .items
    }

    /// Sends `signal` to the process group of the pod's trainer.
    pub fn signal_pod(&self, pod: &str, signal: nix::sys::signal::Signal) {
        let pgid = self
            .agent
            .pod_process(&self.ns, pod)
            .unwrap_or_else(|| panic!("no process recorded for pod {pod}"));
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal)
            .unwrap_or_else(|e| panic!("signalling pod {pod}: {e}"));
    }

    /// Where `stage`'s outputs are on `storage`.
    pub fn stage_dir(&self, storage: &Path, job: &str, stage: &str) -> PathBuf {
        storage.join(&self.ns).join(job).join(stage)
    }
}

/// Creates folder `path` and a hostPath PersistentVolume on it that only `job`'s storage claim in
/// `ns` can bind (claimRef), so parallel tests never take each other's volumes.
pub async fn reserve_storage(client: &Client, ns: &str, job: &str, path: &Path) {
    std::fs::create_dir_all(path).expect("storage folder");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-{job}")},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "hostPath": {"path": path.to_string_lossy()},
            "claimRef": {"namespace": ns, "name": format!("{job}-storage")}
        }
    }))
    .expect("a PV");
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("creating a PV");
}

/// The training steps the stage's metrics log records, in order (evaluation records left out).
pub fn logged_steps(stage_dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(stage_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.get("eval").is_none())
        .filter_map(|r| r["step"].as_u64())
        .collect()
}

/// The stage's held-out evaluations of `metric`, in order (before training, after it).
pub fn logged_evals(stage_dir: &Path, metric: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(stage_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["eval"][metric].as_f64())
        .collect()
}

/// The manifest `examples/<file>`.
pub fn example(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Waits until the stage has logged step `step` (read live from its storage).
pub async fn wait_for_step(stage_dir: &Path, step: u64, timeout: Duration) {
    wait_until(
        &format!("step {step} in {}", stage_dir.display()),
        timeout,
        || {
            let steps = logged_steps(stage_dir);
            async move { Ok(steps.iter().any(|s| *s >= step).then_some(())).map_err(|e: String| e) }
        },
    )
    .await
}

/// Every step from 1 to the last logged exactly once: nothing lost or repeated across restarts.
/// Returns the last step.
pub fn assert_each_step_once(stage_dir: &Path) -> u64 {
    let steps = logged_steps(stage_dir);
    let last = steps.last().copied().unwrap_or(0);
    assert_eq!(
        steps,
        (1..=last).collect::<Vec<_>>(),
        "steps logged in {}",
        stage_dir.display()
    );
    last
}

/// A job on a tiny random GPT-2 (the trainer's synthetic `copy` task) with the given stages.
pub fn tiny_job(name: &str, stages: Value) -> Value {
    rlhf_job(
        name,
        json!({
            "model": {"family": "gpt2", "init": "random",
                      "architecture": {"vocabSize": 50257, "hiddenSize": 32, "numLayers": 1, "numHeads": 2, "maxPositions": 64}},
            "storage": {"accessModes": ["ReadWriteMany"], "size": "1Gi"},
            "stages": stages
        }),
    )
}

/// A one-stage SFT job whose gang is `nodes` pods of one GPU.
pub fn sft_job(name: &str, nodes: u32, steps: u32) -> serde_json::Value {
    tiny_job(
        name,
        json!([{"name": "sft", "kind": "sft", "parallelism": {"nodes": nodes, "gpusPerNode": 1},
                "dataset": {"synthetic": {"task": "copy", "samples": 512, "seed": 1}},
                "training": {"batchSize": 8 * nodes, "microBatchSize": 8, "maxSteps": steps, "maxLength": 32, "learningRate": 0.002}}]),
    )
}

/// The status of stage `name`; panics (naming it) when there is none.
pub fn stage<'a>(status: &'a RLHFJobStatus, name: &str) -> &'a StageStatus {
    status
        .stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name} in {status:?}"))
}

/// The names of pods, for messages.
pub fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}
