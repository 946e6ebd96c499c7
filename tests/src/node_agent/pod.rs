//! One pod's life on the agent: prepare (volumes, environment, ports), run the container's
//! command, report Running, then report how it ended, or stop it when the pod is deleted.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::env::{FieldSource, container_env, overlay};
use super::hosts::{pod_hostname, pod_ip};
use super::ports::{
    Forward, PortAllocator, PortsRecord, Remapped, forward, gang_key, metrics_forwards,
    port_is_free, port_var,
};
use super::process::{self, Launch, resolve_program};
use super::status::{self, Placement};
use super::volumes::{self, BindMount, VolumeContext};

/// What every pod shares: the API, the agent's folders and environment, ports, live groups.
pub struct Shared {
    pub client: Client,
    pub work_dir: PathBuf,
    /// The agent's own environment: the base of every pod's.
    pub agent_env: Vec<(String, String)>,
    pub unshare: PathBuf,
    pub ports: Mutex<PortAllocator>,
    /// Process group of every pod process still running, by pod UID (killed if the agent exits).
    pub live: Mutex<HashMap<String, i32>>,
}

/// `<work-dir>/pods/<ns>_<pod>_<uid8>`: one folder per pod instance.
pub fn pod_dir(work_dir: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    work_dir
        .join("pods")
        .join(format!("{ns}_{name}_{}", uid8(uid)))
}

/// `<work-dir>/logs/<ns>_<pod>_<uid8>.log`: the container's stdout and stderr.
pub fn log_path(work_dir: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    work_dir
        .join("logs")
        .join(format!("{ns}_{name}_{}.log", uid8(uid)))
}

fn uid8(uid: &str) -> String {
    uid.chars().take(8).collect()
}

/// The host path of a pod's generated hosts file (the agent rewrites it in place as the
/// namespace's pods change; the bind mount shows the new text).
pub fn hosts_path(dir: &Path) -> PathBuf {
    dir.join("hosts")
}

/// Seconds the kubelet waits between SIGTERM and SIGKILL, capped at 10 to keep tests short.
pub fn grace_seconds(pod: &Pod) -> u64 {
    let asked = pod.metadata.deletion_grace_period_seconds.or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    });
    asked.unwrap_or(30).clamp(0, 10) as u64
}

/// Identity of a pod instance, fixed when the agent first sees it.
struct Identity {
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    container: String,
    image: String,
    started_at: String,
}

impl Identity {
    fn placement(&self) -> Placement<'_> {
        Placement {
            uid: &self.uid,
            container: &self.container,
            image: &self.image,
            pod_ip: self.ip,
            started_at: &self.started_at,
        }
    }
}

/// Everything needed to start the process, plus what to undo when it ends.
struct Prepared {
    launch: Launch,
    record: PortsRecord,
    forwards: Vec<(SocketAddr, u16)>,
    metrics_block: Option<(u16, u16)>,
}

/// Runs `pod` to its end. `stop` turns Some(grace seconds) when the pod is being deleted.
pub async fn run(shared: Arc<Shared>, pod: Pod, mut stop: watch::Receiver<Option<u64>>) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first().cloned());
    let id = Identity {
        ip: pod_ip(&ns, &name),
        dir: pod_dir(&shared.work_dir, &ns, &name, &uid),
        container: container
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default(),
        image: container
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        started_at: status::now(),
        ns,
        name,
        uid,
    };
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &id.ns);
    let prepared = match &container {
        Some(c) => prepare(&shared, &pod, c, &id).await,
        None => Err("the pod has no containers".to_string()),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(why) => {
            let message = format!("pod {}/{}: {why}", id.ns, id.name);
            tracing::error!("cannot run: {message}");
            report(
                &api,
                &id,
                status::cannot_run(&id.placement(), &message, &status::now()),
            )
            .await;
            return;
        }
    };
    if stop.borrow().is_some() {
        finish_deleted(&shared, &api, &id, &prepared).await;
        return;
    }
    let mut child = match process::spawn(&prepared.launch, &shared.unshare) {
        Ok(child) => child,
        Err(e) => {
            let message = format!(
                "pod {}/{}: starting {}: {e}",
                id.ns,
                id.name,
                prepared.launch.program.display()
            );
            tracing::error!("cannot run: {message}");
            release(&shared, &prepared);
            report(
                &api,
                &id,
                status::cannot_run(&id.placement(), &message, &status::now()),
            )
            .await;
            return;
        }
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    shared
        .live
        .lock()
        .expect("live groups")
        .insert(id.uid.clone(), pgid);
    let _ = std::fs::write(id.dir.join("pid"), format!("{pgid}\n"));
    let forwarders = start_forwarders(&id, &prepared.forwards).await;
    tracing::info!(pod = %format!("{}/{}", id.ns, id.name), ip = %id.ip, pgid, ports = ?prepared.record, "pod started");
    report(&api, &id, status::running(&id.placement(), &status::now())).await;

    let exited = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop.wait_for(Option::is_some) => None,
    };
    let deleted = exited.is_none();
    let exit = match exited {
        Some(status) => status,
        None => {
            let grace = stop.borrow().unwrap_or(0);
            process::stop(&mut child, pgid, Duration::from_secs(grace)).await
        }
    };
    process::kill_leftovers(pgid).await;
    shared.live.lock().expect("live groups").remove(&id.uid);
    for f in forwarders {
        f.abort();
    }
    use std::os::unix::process::ExitStatusExt;
    let t = match &exit {
        Ok(s) => status::termination(s.code(), s.signal()),
        Err(_) => status::termination(None, Some(9)),
    };
    // Read before the agent's own line goes into the log: the message is the program's last words.
    let falls_back = container
        .as_ref()
        .and_then(|c| c.termination_message_policy.as_deref())
        == Some("FallbackToLogsOnError");
    let message = (falls_back && t.exit_code != 0)
        .then(|| std::fs::read_to_string(&prepared.launch.log).ok())
        .flatten()
        .map(|log| status::log_tail_message(&log));
    append_log(
        &prepared.launch.log,
        &format!(
            "rlhf-node-agent: process exited: {exit:?} -> exit code {}",
            t.exit_code
        ),
    );
    tracing::info!(pod = %format!("{}/{}", id.ns, id.name), exit_code = t.exit_code, deleted, "pod process ended");
    if deleted {
        finish_deleted(&shared, &api, &id, &prepared).await;
    } else {
        release(&shared, &prepared);
        report(
            &api,
            &id,
            status::terminated(&id.placement(), t, message.as_deref(), &status::now()),
        )
        .await;
    }
}

async fn finish_deleted(shared: &Shared, api: &Api<Pod>, id: &Identity, prepared: &Prepared) {
    release(shared, prepared);
    if let Err(e) = status::final_delete(api, &id.name, &id.uid).await {
        tracing::warn!(pod = %format!("{}/{}", id.ns, id.name), error = %e, "final delete failed (retried by the agent)");
    }
}

async fn report(api: &Api<Pod>, id: &Identity, body: serde_json::Value) {
    if let Err(e) = status::write(api, &id.name, body).await {
        tracing::error!(pod = %format!("{}/{}", id.ns, id.name), error = %e, "status patch failed");
    }
}

fn release(shared: &Shared, prepared: &Prepared) {
    if let Some((base, len)) = prepared.metrics_block {
        shared
            .ports
            .lock()
            .expect("port allocator")
            .release(base, len);
    }
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

async fn start_forwarders(id: &Identity, forwards: &[(SocketAddr, u16)]) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for (listen, target) in forwards {
        match forward(*listen, *target).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                tracing::error!(pod = %format!("{}/{}", id.ns, id.name), %listen, error = %e, "cannot listen for a declared port")
            }
        }
    }
    handles
}

/// Resolves everything about the container; errors say what is wrong (the pod name is added).
async fn prepare(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    id: &Identity,
) -> Result<Prepared, String> {
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    let Some((program, args)) = command.split_first() else {
        return Err(format!(
            "container {} has no command (rlhf-node-agent runs commands, not images)",
            container.name
        ));
    };
    let agent_path = shared
        .agent_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let program = resolve_program(program, agent_path).ok_or_else(|| {
        format!(
            "container {}: {program} is not on the agent's PATH",
            container.name
        )
    })?;
    std::fs::create_dir_all(&id.dir).map_err(|e| format!("creating {}: {e}", id.dir.display()))?;
    let log = log_path(&shared.work_dir, &id.ns, &id.name, &id.uid);
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let ctx = VolumeContext {
        client: &shared.client,
        namespace: &id.ns,
        pod_dir: &id.dir,
        work_dir: &shared.work_dir,
    };
    let mut mounts = volumes::prepare(&ctx, pod, container).await?;
    mounts.push(BindMount {
        source: hosts_path(&id.dir),
        target: "/etc/hosts".into(),
        read_only: true,
    });

    let fields = FieldSource {
        pod,
        pod_ip: id.ip,
        host_ip: "127.0.0.1",
    };
    let pod_env = container_env(container, &fields)?;
    let (record, forwards, metrics_block) = plan_ports(shared, pod, container, id, &pod_env)?;
    let hostname = pod_hostname(pod);
    let mut overrides = record.env_overrides();
    overrides.push(("HOSTNAME".into(), hostname.clone()));
    let env = overlay(shared.agent_env.iter().cloned(), &pod_env, &overrides);
    let json = serde_json::to_string_pretty(&record).unwrap_or_default();
    std::fs::write(id.dir.join("ports.json"), json)
        .map_err(|e| format!("writing ports.json: {e}"))?;
    append_log(
        &log,
        &format!(
            "rlhf-node-agent: pod {}/{} ({}) on {}: {} {:?}",
            id.ns,
            id.name,
            id.uid,
            id.ip,
            program.display(),
            args
        ),
    );
    let launch = Launch {
        program,
        args: args.to_vec(),
        env,
        working_dir: container.working_dir.clone(),
        hostname,
        mounts,
        log,
    };
    Ok(Prepared {
        launch,
        record,
        forwards,
        metrics_block,
    })
}

type PortPlan = (PortsRecord, Vec<(SocketAddr, u16)>, Option<(u16, u16)>);

/// MASTER_PORT per gang, RLHF_METRICS_PORT per pod, and forwarders for the declared ports.
fn plan_ports(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    id: &Identity,
    env: &[(String, String)],
) -> Result<PortPlan, String> {
    let mut record = PortsRecord {
        pod_ip: id.ip.to_string(),
        ..Default::default()
    };
    let mut forwards = Vec::new();
    let mut block = None;
    let mut ports = shared.ports.lock().expect("port allocator");
    if let Some(original) = port_var(env, "MASTER_PORT")? {
        let key = gang_key(&id.ns, &id.name, env, pod.labels());
        let port = ports
            .master_port(&key)
            .ok_or("no free port for MASTER_PORT")?;
        record.master_port = Some(Remapped {
            original,
            assigned: port,
        });
    }
    if let Some(original) = port_var(env, "RLHF_METRICS_PORT")? {
        let local_world = port_var(env, "LOCAL_WORLD_SIZE")
            .map_err(|_| "env LOCAL_WORLD_SIZE is not a small number".to_string())?
            .unwrap_or(1)
            .max(1);
        let base = ports
            .block(local_world, port_is_free)
            .ok_or("no free ports for RLHF_METRICS_PORT")?;
        block = Some((base, local_world));
        record.metrics_port = Some(Remapped {
            original,
            assigned: base,
        });
        record.local_ranks = local_world;
        let declared: Vec<i32> = container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        for (from, to) in metrics_forwards(original, base, local_world, &declared) {
            let listen = SocketAddr::from((id.ip, from));
            record.forwards.push(Forward {
                listen: listen.to_string(),
                target: format!("127.0.0.1:{to}"),
            });
            forwards.push((listen, to));
        }
    }
    Ok((record, forwards, block))
}
