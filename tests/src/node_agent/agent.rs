//! The agent's loop: keep its Nodes Ready, start pods the scheduler bound to them, stop pods
//! being deleted, keep hosts files current, and take every pod process down when it exits.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cli::Args;
use super::hosts::{HostEntry, hosts_file, namespace_entries, pod_hostname, pod_ip};
use super::pod::{self, Shared, grace_seconds, hosts_path, pod_dir};
use super::ports::PortAllocator;
use super::status::{self, Placement};
use crate::kubelet::register_node;

/// Ports handed out to pods: below Linux's default ephemeral range (32768-60999).
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;
const POLL: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A pod this agent started.
struct Tracked {
    ns: String,
    name: String,
    grace: u64,
    hosts: String,
    stop: watch::Sender<Option<u64>>,
    task: JoinHandle<()>,
}

struct Agent {
    shared: Arc<Shared>,
    nodes: HashSet<String>,
    pods: HashMap<String, Tracked>,
}

/// Runs the agent until SIGTERM/SIGINT (or stdin EOF with --exit-on-stdin-eof).
pub async fn run(args: Args) -> Result<()> {
    let client = match &args.kubeconfig {
        Some(path) => crate::cluster::client_for(path).await?,
        None => Client::try_default().await?,
    };
    for dir in ["logs", "pods", "pvc"] {
        std::fs::create_dir_all(args.work_dir.join(dir))
            .with_context(|| format!("creating {}", args.work_dir.join(dir).display()))?;
    }
    let work_dir = std::fs::canonicalize(&args.work_dir)?;
    let names: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    for name in &names {
        register_node(&client, name, args.gpus_per_node, labels.clone())
            .await
            .with_context(|| format!("registering node {name}"))?;
        tracing::info!(node = %name, gpus = args.gpus_per_node, "node registered");
    }
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        names.clone(),
        args.gpus_per_node,
        labels,
    ));
    let agent_env: Vec<(String, String)> = std::env::vars().collect();
    let agent_path = agent_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let unshare = super::process::resolve_program("unshare", agent_path.as_deref())
        .context("util-linux `unshare` is not on PATH")?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        work_dir,
        agent_env,
        unshare,
        ports: Mutex::new(PortAllocator::new(
            PORT_RANGE,
            std::process::id().wrapping_mul(2_654_435_761),
        )),
        live: Mutex::new(HashMap::new()),
    });
    let mut agent = Agent {
        shared: shared.clone(),
        nodes: names.iter().cloned().collect(),
        pods: HashMap::new(),
    };
    let shutdown = shutdown_requested(args.exit_on_stdin_eof);
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            why = &mut shutdown => { tracing::info!(%why, "shutting down"); break; }
            _ = ticks.tick() => if let Err(e) = agent.tick().await { tracing::warn!(error = %e, "pod sync failed"); },
        }
    }
    heartbeat.abort();
    for (uid, pgid) in shared.live.lock().expect("live groups").drain() {
        tracing::info!(%uid, pgid, "killing pod processes");
        super::process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    // Nodes of a dead agent would stay Ready (nothing here marks them NotReady) and attract pods.
    let nodes: Api<Node> = Api::all(client);
    for name in &names {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            nodes.delete(name, &DeleteParams::default()),
        )
        .await;
    }
    Ok(())
}

async fn heartbeat(
    client: Client,
    names: Vec<String>,
    gpus: u32,
    labels: BTreeMap<String, String>,
) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        for name in &names {
            // Re-registering also recreates a deleted Node and drops a returned not-ready taint.
            if let Err(e) = register_node(&client, name, gpus, labels.clone()).await {
                tracing::warn!(node = %name, error = %e, "heartbeat failed");
            }
        }
    }
}

/// Resolves with the reason once the agent should stop.
async fn shutdown_requested(watch_stdin: bool) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if watch_stdin {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            let _ = eof_tx.send(());
        });
    }
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return "cannot install signal handlers";
    };
    let stdin_closed = async move {
        match eof_rx.await {
            Ok(()) => (),
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = stdin_closed => "stdin closed",
    }
}

impl Agent {
    async fn tick(&mut self) -> Result<()> {
        let api: Api<Pod> = Api::all(self.shared.client.clone());
        let all = api.list(&ListParams::default()).await?.items;
        let mut entries: HashMap<String, Vec<HostEntry>> = HashMap::new();
        let mut seen = HashSet::new();
        for pod in &all {
            let on_ours = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| self.nodes.contains(n));
            let Some(uid) = pod.metadata.uid.clone().filter(|_| on_ours) else {
                continue;
            };
            seen.insert(uid.clone());
            let ns = pod.namespace().unwrap_or_default();
            let peers = entries
                .entry(ns.clone())
                .or_insert_with(|| namespace_entries(&ns, &all));
            let hosts = hosts_file(pod_ip(&ns, &pod.name_any()), &pod_hostname(pod), peers);
            self.sync(pod, uid, hosts).await;
        }
        // Pods that vanished without a graceful delete (force-deleted): stop, then forget.
        self.pods.retain(|uid, t| {
            if seen.contains(uid) {
                return true;
            }
            let grace = t.grace;
            t.stop.send_if_modified(|s| s.replace(grace).is_none());
            !t.task.is_finished()
        });
        Ok(())
    }

    async fn sync(&mut self, pod: &Pod, uid: String, hosts: String) {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let Some(t) = self.pods.get_mut(&uid) else {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if deleting {
                let _ = status::final_delete(&api, &pod.name_any(), &uid).await;
            } else if matches!(phase, None | Some("Pending")) {
                self.start(pod, uid, hosts);
            } else if phase == Some("Running") {
                report_lost(&api, pod, &uid).await;
            }
            return;
        };
        if deleting {
            let grace = grace_seconds(pod);
            t.stop.send_if_modified(|s| s.replace(grace).is_none());
            if t.task.is_finished()
                && let Err(e) = status::final_delete(&api, &t.name, &uid).await
            {
                tracing::warn!(pod = %format!("{}/{}", t.ns, t.name), error = %e, "final delete failed");
            }
        } else if hosts != t.hosts && !t.task.is_finished() {
            let dir = pod_dir(&self.shared.work_dir, &t.ns, &t.name, &uid);
            // In place (same inode), so the pod's bind mount shows the new text.
            if std::fs::write(hosts_path(&dir), &hosts).is_ok() {
                t.hosts = hosts;
            }
        }
    }

    fn start(&mut self, pod: &Pod, uid: String, hosts: String) {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let dir = pod_dir(&self.shared.work_dir, &ns, &name, &uid);
        if let Err(e) = write_new(&hosts_path(&dir), &hosts) {
            tracing::error!(pod = %format!("{ns}/{name}"), error = %e, "cannot write the hosts file");
        }
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(pod::run(self.shared.clone(), pod.clone(), stop_rx));
        tracing::info!(pod = %format!("{ns}/{name}"), node = ?pod.spec.as_ref().and_then(|s| s.node_name.clone()), "starting pod");
        self.pods.insert(
            uid,
            Tracked {
                ns,
                name,
                grace: grace_seconds(pod),
                hosts,
                stop,
                task,
            },
        );
    }
}

fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

/// A pod Running on our node that this agent never started: its process died with an earlier agent.
async fn report_lost(api: &Api<Pod>, pod: &Pod, uid: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(status::now, |t| t.0.to_string());
    let placement = Placement {
        uid,
        container: container.map_or("", |c| c.name.as_str()),
        image: container.and_then(|c| c.image.as_deref()).unwrap_or(""),
        pod_ip: pod_ip(&ns, &name),
        started_at: &started,
    };
    tracing::warn!(pod = %format!("{ns}/{name}"), "found Running but not started by this agent: reporting it Failed");
    let _ = status::write(api, &name, status::lost(&placement, &status::now())).await;
}
