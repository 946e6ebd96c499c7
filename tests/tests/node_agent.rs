//! rlhf-node-agent against the real control plane: the real scheduler binds pods to the agent's
//! Nodes, and the agent runs their commands as processes with volumes, DNS names, remapped ports
//! and kubelet-like status; deleting a pod stops its processes. Shell and python commands stand
//! in for the trainer.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rlhf_test_support::node_agent::{NodeAgentProcess, pod_ip};
use rlhf_test_support::{TestCluster, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POOL_LABEL: &str = "rlhf.dev/test-agent-pool";
const WAIT: Duration = Duration::from_secs(20);
const BIND_WAIT: Duration = Duration::from_secs(90);

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating an object")
}

/// A one-container pod on the test's nodes, asking for `gpus` GPUs.
fn pod(ns: &str, name: &str, gpus: u32, container: Value, extra_spec: Value) -> Value {
    let mut spec = json!({
        "nodeSelector": {POOL_LABEL: ns},
        "restartPolicy": "Never",
        "containers": [container],
    });
    spec["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": gpus.to_string()}});
    spec.as_object_mut()
        .unwrap()
        .extend(extra_spec.as_object().unwrap().clone());
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"rlhf.dev/gang-generation": "0"}}, "spec": spec})
}

fn sh(script: &str) -> Value {
    json!({"name": "main", "image": "none", "command": ["sh", "-c", script]})
}

async fn wait_phase(pods: &Api<Pod>, name: &str, phase: &str, agent: &NodeAgentProcess) -> Pod {
    wait_until(
        &format!(
            "pod {name} to be {phase} (agent log {})",
            agent.log.display()
        ),
        WAIT,
        || async move {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let now = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok((now.as_deref() == Some(phase)).then_some(pod))
        },
    )
    .await
}

fn terminated(pod: &Pod) -> (i32, String) {
    let state = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .clone()
        .unwrap();
    let t = state.terminated.expect("a terminated container state");
    (t.exit_code, t.reason.unwrap_or_default())
}

async fn wait_file(path: &Path) -> String {
    wait_until(
        &format!("{} to be written", path.display()),
        WAIT,
        || async move { Ok(std::fs::read_to_string(path).ok().filter(|s| !s.is_empty())) },
    )
    .await
}

async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Killed processes linger briefly as zombies until init reaps them.
async fn wait_group_gone(pgid: i32, what: &str) {
    wait_until(what, Duration::from_secs(3), || async move {
        Ok((!group_alive(pgid)).then_some(()))
    })
    .await;
}

async fn wait_gone(pods: &Api<Pod>, name: &str, within: Duration) {
    wait_until(
        &format!("pod {name} to be removed"),
        within,
        || async move {
            Ok(pods
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
                .then_some(()))
        },
    )
    .await;
}

/// A hostPath volume bound (by the real persistentvolume-binder) to claim `data` in `ns`.
async fn storage(client: &Client, ns: &str, host_dir: &Path) -> String {
    std::fs::create_dir_all(host_dir).unwrap();
    let pv_name = format!("{ns}-data");
    create(&Api::<PersistentVolume>::all(client.clone()), json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "hostPath": {"path": host_dir}, "claimRef": {"namespace": ns, "name": "data"}}
    }))
    .await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    create(&claims, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    // Pods created before the claim is bound wait a scheduler retry period (up to a minute).
    // The binder may only pick the claim up at its 15 s resync when the controller-manager is
    // busy with other tests' objects, hence the longer wait.
    wait_until("claim data to be bound", BIND_WAIT, || {
        let claims = claims.clone();
        async move {
            let pvc = claims.get("data").await.map_err(|e| e.to_string())?;
            Ok((pvc.status.and_then(|s| s.phase).as_deref() == Some("Bound")).then_some(()))
        }
    })
    .await;
    pv_name
}

#[tokio::test]
async fn node_agent_runs_pods_as_local_processes() {
    let cluster = TestCluster::connect().await;
    let client = cluster.client.clone();
    let ns = cluster.namespace("agent").await;
    let work = std::env::temp_dir().join(format!("rlhf-node-agent-test-{ns}"));
    let _ = std::fs::remove_dir_all(&work);
    let agent = NodeAgentProcess::start(
        &cluster.kubeconfig,
        &work,
        2,
        4,
        &format!("{ns}-node"),
        &[(POOL_LABEL, &ns)],
    );
    agent.wait_ready(&client).await;

    let data = work.join("pv-data");
    let pv = storage(&client, &ns, &data).await;
    create(&Api::<ConfigMap>::namespaced(client.clone(), &ns), json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"greeting": "hello from a configMap"}
    }))
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let master = format!("web-0.web.{ns}.svc");
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let gang_env = |extra: Vec<Value>| {
        let mut env = vec![
            json!({"name": "MASTER_ADDR", "value": master}),
            json!({"name": "MASTER_PORT", "value": "29500"}),
        ];
        env.extend(extra);
        Value::Array(env)
    };
    let dns = |host: &str| json!({"hostname": host, "subdomain": "web"});

    // The second member of a gang: reports the MASTER_PORT it got and fails with code 3.
    let mut member = sh("echo \"$MASTER_PORT\" > /data/web-1-master; exit 3");
    member["env"] = gang_env(vec![]);
    member["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let mut web1 = pod(&ns, "web-1", 1, member, dns("web-1"));
    web1["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
    create(&pods, web1).await;

    // Rank 0: records what it sees, then serves "metrics" for two local ranks.
    let script = r#"set -e
cat /etc/rlhf-agent-test/greeting > /data/greeting
getent hosts "web-1.web.$MY_NAMESPACE.svc" > /data/resolved
echo "$MASTER_PORT $RLHF_METRICS_PORT $MY_NAME $MY_IP" > /data/env
hostname > /data/hostname
pwd > /data/pwd
if touch /etc/rlhf-agent-test/new 2>/dev/null; then echo writable > /data/configmap; else echo read-only > /data/configmap; fi
mkdir -p r0 r1 && echo rank0 > r0/metrics && echo rank1 > r1/metrics
python3 -m http.server --bind 0.0.0.0 --directory r1 $((RLHF_METRICS_PORT + 1)) >/dev/null 2>&1 &
echo yes > /data/ready
exec python3 -m http.server --bind 0.0.0.0 --directory r0 "$RLHF_METRICS_PORT""#;
    let mut main = sh(script);
    main["env"] = gang_env(vec![
        json!({"name": "RLHF_METRICS_PORT", "value": "9400"}),
        json!({"name": "LOCAL_WORLD_SIZE", "value": "2"}),
        field("MY_NAME", "metadata.name"),
        field("MY_NAMESPACE", "metadata.namespace"),
        field("MY_IP", "status.podIP"),
    ]);
    main["workingDir"] = json!("/scratch-agent-test");
    main["ports"] = json!([{"containerPort": 9400}, {"containerPort": 9401}]);
    main["volumeMounts"] = json!([
        {"name": "data", "mountPath": "/data"},
        {"name": "settings", "mountPath": "/etc/rlhf-agent-test"},
        {"name": "scratch", "mountPath": "/scratch-agent-test"}
    ]);
    let mut web0 = pod(&ns, "web-0", 2, main, dns("web-0"));
    web0["spec"]["volumes"] = json!([
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "settings", "configMap": {"name": "settings"}},
        {"name": "scratch", "emptyDir": {}}
    ]);
    create(&pods, web0).await;

    create(&pods, pod(&ns, "ok", 1, sh("echo fine"), json!({}))).await;
    create(&pods, pod(&ns, "killed", 1, sh("kill -9 $$"), json!({}))).await;
    create(
        &pods,
        pod(
            &ns,
            "no-command",
            1,
            json!({"name": "main", "image": "none"}),
            json!({}),
        ),
    )
    .await;
    let mut stubborn = sh("trap '' TERM; echo up > /data/stubborn; sleep 1000");
    stubborn["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    let mut stubborn = pod(
        &ns,
        "stubborn",
        1,
        stubborn,
        json!({"terminationGracePeriodSeconds": 2}),
    );
    stubborn["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
    create(&pods, stubborn).await;

    // Exit codes and reasons.
    let ok = wait_phase(&pods, "ok", "Succeeded", &agent).await;
    assert_eq!(terminated(&ok), (0, "Completed".to_string()));
    assert_eq!(
        agent.pod_log(&ns, "ok").unwrap_or_default().lines().nth(1),
        Some("fine"),
        "the container's output is logged after the agent's header"
    );
    assert_eq!(
        terminated(&wait_phase(&pods, "killed", "Failed", &agent).await),
        (137, "Error".to_string())
    );
    assert_eq!(
        terminated(&wait_phase(&pods, "web-1", "Failed", &agent).await),
        (3, "Error".to_string())
    );
    let bad = wait_phase(&pods, "no-command", "Failed", &agent).await;
    let message = bad.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains("no-command") && message.contains("no command"),
        "{message}"
    );

    // Rank 0 runs with its volumes, names, environment and ports.
    let ip = pod_ip(&ns, "web-0");
    let running = wait_phase(&pods, "web-0", "Running", &agent).await;
    let status = running.status.clone().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some(ip.to_string().as_str()));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        status
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let container = &status.container_statuses.unwrap()[0];
    assert!(
        container.name == "main"
            && container.ready
            && container.state.as_ref().unwrap().running.is_some()
    );
    assert!(
        running
            .spec
            .unwrap()
            .node_name
            .unwrap()
            .starts_with(&format!("{ns}-node-")),
        "bound by the scheduler to our nodes"
    );
    wait_file(&data.join("ready")).await;
    let read = |f: &str| {
        std::fs::read_to_string(data.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(read("greeting"), "hello from a configMap");
    assert_eq!(read("configmap"), "read-only");
    assert_eq!(read("hostname"), "web-0");
    assert_eq!(read("pwd"), "/scratch-agent-test");
    assert!(
        read("resolved").starts_with(&pod_ip(&ns, "web-1").to_string()),
        "web-1's name resolves: {}",
        read("resolved")
    );
    let ports = agent.pod_ports(&ns, "web-0").expect("ports.json of web-0");
    let metrics_base = ports
        .metrics_port
        .expect("RLHF_METRICS_PORT remapped")
        .assigned;
    let master_port = ports.master_port.expect("MASTER_PORT remapped").assigned;
    assert_eq!(ports.local_ranks, 2);
    assert_eq!(ports.forwards.len(), 2, "{ports:?}");
    assert_eq!(
        read("env"),
        format!("{master_port} {metrics_base} web-0 {ip}")
    );
    assert_ne!(master_port, 29500);
    assert_eq!(
        read("web-1-master"),
        master_port.to_string(),
        "one MASTER_PORT per gang"
    );
    // The operator scrapes podIP:declared port, exactly as in a cluster.
    for (port, body) in [(9400, "rank0"), (9401, "rank1")] {
        let text = wait_until(&format!("{ip}:{port} to answer"), WAIT, || async move {
            // Until the server listens, the forwarder accepts and closes: an empty answer.
            Ok(http_get(ip, port, "/metrics")
                .await
                .ok()
                .filter(|t| !t.is_empty()))
        })
        .await;
        assert!(
            text.starts_with("HTTP/1.0 200") && text.trim_end().ends_with(body),
            "{ip}:{port}: {text}"
        );
    }

    // Deleting a pod stops its whole process group, its forwarders, and removes it.
    let pgid = agent.pod_process(&ns, "web-0").expect("pid of web-0");
    assert!(group_alive(pgid));
    pods.delete("web-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "web-0", Duration::from_secs(10)).await;
    wait_group_gone(pgid, "web-0's processes to be gone").await;
    assert!(
        http_get(ip, 9400, "/metrics").await.is_err(),
        "the forwarder is gone"
    );

    // A stopped process that ignores SIGTERM is killed after the grace period.
    wait_file(&data.join("stubborn")).await;
    let pgid = agent.pod_process(&ns, "stubborn").expect("pid of stubborn");
    killpg(Pid::from_raw(pgid), Signal::SIGSTOP).unwrap();
    let asked = std::time::Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "stubborn", Duration::from_secs(10)).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "waited for the grace period: {:?}",
        asked.elapsed()
    );
    wait_group_gone(pgid, "stubborn's processes to be gone").await;

    // Finished pods are removed at once.
    pods.delete("ok", &DeleteParams::default()).await.unwrap();
    wait_gone(&pods, "ok", Duration::from_secs(5)).await;

    let pid = agent.pid();
    drop(agent);
    assert!(
        nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_err(),
        "the agent exits when dropped"
    );
    // No pv-protection controller runs here, so its finalizer would keep the volume forever.
    let volumes = Api::<PersistentVolume>::all(client.clone());
    let _ = volumes
        .patch(
            &pv,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = volumes.delete(&pv, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&work);
}
