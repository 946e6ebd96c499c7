//! For tests: the agent as a child process, and what it records about each pod on disk.
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::Api;

use super::ports::PortsRecord;
use crate::operator::workspace_binary;
use crate::wait::wait_until;

/// A running `rlhf-node-agent`. Dropping it stops the agent (SIGTERM, so that it kills its pod
/// processes and removes its Nodes; SIGKILL if it has not exited within 5 s); if the test
/// process dies instead, the agent sees its stdin close and does the same.
pub struct NodeAgentProcess {
    child: Child,
    _stdin: ChildStdin,
    pub log: PathBuf,
    pub work_dir: PathBuf,
    pub nodes: Vec<String>,
}

impl NodeAgentProcess {
    /// Starts the agent with nodes `<prefix>-0..nodes-1`, each with `gpus` nvidia.com/gpu and
    /// `labels`; pod folders and logs go under `work_dir`, the agent's own log to `work_dir/agent.log`.
    /// The release binaries' folder comes first on the agent's PATH (pods run `rlhf-trainer`).
    pub fn start(
        kubeconfig: &Path,
        work_dir: &Path,
        nodes: u32,
        gpus: u32,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        std::fs::create_dir_all(work_dir).expect("creating the agent's work dir");
        let work_dir = std::fs::canonicalize(work_dir).expect("the agent's work dir");
        let log = work_dir.join("agent.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log file");
        let binary = workspace_binary("rlhf-node-agent");
        let bin_dir = binary.parent().expect("target/release").to_path_buf();
        let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .expect("PATH");
        let mut cmd = Command::new(&binary);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--work-dir")
            .arg(&work_dir);
        cmd.args([
            "--nodes",
            &nodes.to_string(),
            "--gpus-per-node",
            &gpus.to_string(),
            "--prefix",
            prefix,
            "--exit-on-stdin-eof",
        ]);
        for (k, v) in labels {
            cmd.args(["--label", &format!("{k}={v}")]);
        }
        let mut child = cmd
            .env("PATH", path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting rlhf-node-agent");
        let stdin = child.stdin.take().expect("piped stdin");
        Self {
            child,
            _stdin: stdin,
            log,
            work_dir,
            nodes: (0..nodes).map(|i| format!("{prefix}-{i}")).collect(),
        }
    }

    /// Waits (up to 30 s) until every Node of this agent exists and is Ready without taints.
    pub async fn wait_ready(&self, client: &Client) {
        let api: Api<Node> = Api::all(client.clone());
        for name in &self.nodes {
            wait_until(
                &format!(
                    "node {name} to be Ready (agent log: {})",
                    self.log.display()
                ),
                Duration::from_secs(30),
                || {
                    let api = api.clone();
                    async move {
                        let Some(node) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
                            return Ok(None);
                        };
                        let ready = node
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        let untainted = node
                            .spec
                            .and_then(|s| s.taints)
                            .unwrap_or_default()
                            .is_empty();
                        Ok((ready && untainted).then_some(()))
                    }
                },
            )
            .await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The container output of the newest pod named `ns/pod`.
    pub fn pod_log(&self, ns: &str, pod: &str) -> Option<String> {
        pod_log(&self.work_dir, ns, pod)
    }

    pub fn pod_process(&self, ns: &str, pod: &str) -> Option<i32> {
        pod_process(&self.work_dir, ns, pod)
    }

    pub fn pod_ports(&self, ns: &str, pod: &str) -> Option<PortsRecord> {
        pod_ports(&self.work_dir, ns, pod)
    }
}

impl Drop for NodeAgentProcess {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of the newest instance of pod `ns/pod` under `work_dir/pods` (pods are
/// recreated under the same name; the folder name ends in the instance's UID prefix).
pub fn newest_pod_dir(work_dir: &Path, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(work_dir.join("pods"))
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|uid| !uid.contains('_'))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
}

/// The process group of the newest `ns/pod` (its container's processes), for tests that
/// SIGKILL or SIGSTOP a pod. It may have exited since.
pub fn pod_process(work_dir: &Path, ns: &str, pod: &str) -> Option<i32> {
    let text = std::fs::read_to_string(newest_pod_dir(work_dir, ns, pod)?.join("pid")).ok()?;
    text.trim().parse().ok()
}

/// How the agent remapped the newest `ns/pod`'s ports.
pub fn pod_ports(work_dir: &Path, ns: &str, pod: &str) -> Option<PortsRecord> {
    serde_json::from_slice(
        &std::fs::read(newest_pod_dir(work_dir, ns, pod)?.join("ports.json")).ok()?,
    )
    .ok()
}

/// The container output of the newest `ns/pod`.
pub fn pod_log(work_dir: &Path, ns: &str, pod: &str) -> Option<String> {
    let dir = newest_pod_dir(work_dir, ns, pod)?;
    let name = format!("{}.log", dir.file_name()?.to_str()?);
    std::fs::read_to_string(work_dir.join("logs").join(name)).ok()
}
