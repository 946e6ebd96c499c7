//! Packaging and observability end to end. The chart is rendered by the real Helm engine and its
//! objects applied to the real API server; the operator runs with the chart's ServiceAccount
//! token while RBAC is enforced; rlhf-node-agent runs the real trainers; a real Prometheus
//! scrapes the operator and every trainer process (found through Kubernetes service discovery by
//! the same label and port names as the chart's PodMonitor). After the pipeline succeeds (with
//! one gang restart), every query of the Grafana dashboard returns data from that Prometheus, and
//! the trainer metric names are those of docs/ARCHITECTURE.md#metrics. Then a permission is taken
//! away: the operator fails visibly (log and metric) and keeps running.
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::training::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;
use rlhf_operator::crd::{JobPhase, StagePhase};
use rlhf_test_support::chart;
use rlhf_test_support::node_agent::NodeAgentProcess;
use rlhf_test_support::prometheus::PrometheusProcess;
use rlhf_test_support::{OperatorProcess, TestCluster, wait_until};
use serde_json::{Value, json};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Prometheus: the operator by address; trainer processes from a file_sd file that
/// `discover_trainer_pods` keeps current (Debian's Prometheus build has no Kubernetes discovery).
fn prometheus_config(operator: &str, targets: &std::path::Path) -> String {
    let config = json!({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {"job_name": "rlhf-operator", "static_configs": [{"targets": [operator]}]},
            {"job_name": "rlhf-trainers", "honor_labels": true,
             "file_sd_configs": [{"files": [targets], "refresh_interval": "2s"}]}
        ]
    });
    serde_yaml::to_string(&config).expect("prometheus config")
}

/// Does what the chart's PodMonitor asks of prometheus-operator: every second, the Running pods
/// labelled `app.kubernetes.io/managed-by: rlhf-operator`, one target per container port named
/// `metrics-<rank>`, at podIP:port, written atomically to `file` for Prometheus' file_sd.
async fn discover_trainer_pods(client: kube::Client, ns: String, file: std::path::PathBuf) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=rlhf-operator");
    loop {
        if let Ok(list) = pods.list(&selector).await {
            let targets: Vec<Value> = list
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| Some((p, p.status.as_ref()?.pod_ip.clone()?)))
                .flat_map(|(p, ip)| {
                    let ports = p.spec.iter().flat_map(|s| s.containers.iter()).flat_map(|c| c.ports.iter().flatten());
                    ports
                        .filter(|port| port.name.as_deref().is_some_and(|n| n.starts_with("metrics-")))
                        .map(|port| json!({"targets": [format!("{ip}:{}", port.container_port)], "labels": {"pod": p.metadata.name}}))
                        .collect::<Vec<_>>()
                })
                .collect();
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, Value::Array(targets).to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every PromQL expression of the dashboard (rows' panels included), with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = chart::chart_dir().join("dashboards/rlhf.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's variables as a dashboard user would pick them for this job.
fn substitute(expr: &str, ns: &str, job: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "10s")
        .replace("$__range", "5m")
        .replace("${namespace}", ns)
        .replace("$namespace", ns)
        .replace("${rlhf_job}", job)
        .replace("$rlhf_job", job)
}

#[tokio::test]
async fn the_charts_operator_trains_under_rbac_and_every_dashboard_query_has_data() {
    let cluster = TestCluster::connect().await;
    let ns = cluster.namespace("obs").await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(&ns);
    std::fs::create_dir_all(&dir).unwrap();

    // The chart's objects, as `helm install` would create them (the CRD is already installed; the
    // Deployment's image cannot run without a container runtime, so its operator runs as a
    // process with the same ServiceAccount; no prometheus-operator CRDs here).
    let docs = chart::render(&ns, &ns, None).expect("rendering the chart");
    let skip = [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceMonitor",
        "PodMonitor",
    ];
    let objects: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| !skip.contains(&chart::kind(d)))
        .collect();
    let stream: String = objects
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    let (ok, out) = cluster
        .kubectl(&["apply", "-n", &ns, "-f", "-"], &stream)
        .await;
    assert!(ok, "applying the chart's objects: {out}");
    let account = docs
        .iter()
        .find(|d| chart::kind(d) == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's ServiceAccount");
    let role_name = docs
        .iter()
        .find(|d| chart::kind(d) == "ClusterRole")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's ClusterRole")
        .to_string();
    let kubeconfig = cluster
        .kubeconfig_for_service_account(&ns, account, &dir.join("operator.kubeconfig"))
        .await
        .expect("a kubeconfig for the ServiceAccount");

    let agent = NodeAgentProcess::start(
        &cluster.kubeconfig,
        &dir.join("agent"),
        1,
        2,
        &ns,
        &[(POOL_LABEL, &ns)],
    );
    agent.wait_ready(&cluster.client).await;
    let mut operator = OperatorProcess::start(&kubeconfig, &ns);
    let operator_addr = wait_until(
        "the operator's metrics address in its log",
        Duration::from_secs(30),
        || {
            let addr = operator.metrics_addr();
            async move { Ok(addr) }
        },
    )
    .await;
    let targets = dir.join("trainer-targets.json");
    std::fs::write(&targets, "[]").unwrap();
    let discovery = tokio::spawn(discover_trainer_pods(
        cluster.client.clone(),
        ns.clone(),
        targets.clone(),
    ));
    let prometheus = PrometheusProcess::start(
        &dir.join("prometheus"),
        &prometheus_config(&operator_addr, &targets),
    )
    .await;

    // A pipeline with all three kinds (so every trainer metric exists; PPO answers in groups of 2 for
    // the group metrics), 2 local ranks per pod, and one killed PPO process (so a gang restart is
    // counted).
    let scene_storage = dir.join("storage");
    let job = "observed";
    let stages = json!([
        {"name": "sft", "kind": "sft", "dataset": {"synthetic": {"task": "copy", "samples": 256, "seed": 1}},
         "training": {"batchSize": 16, "microBatchSize": 4, "maxSteps": 8, "maxLength": 32, "learningRate": 0.002}},
        {"name": "rm", "kind": "rm", "dataset": {"synthetic": {"task": "copy", "samples": 256, "seed": 11}},
         "training": {"batchSize": 16, "microBatchSize": 4, "maxSteps": 8, "maxLength": 32, "learningRate": 0.002}},
        {"name": "ppo", "kind": "ppo", "dataset": {"synthetic": {"task": "copy", "samples": 1024, "seed": 41}},
         "training": {"batchSize": 16, "microBatchSize": 4, "maxSteps": 20, "maxLength": 32, "learningRate": 0.0002, "checkpointEvery": 4},
         "rl": {"rolloutBatchSize": 8, "groupSize": 2, "generation": {"maxNewTokens": 8}}}
    ]);
    let mut manifest = tiny_job(job, stages);
    manifest["spec"]["parallelism"] = json!({"nodes": 1, "gpusPerNode": 2});
    manifest["spec"]["nodeSelector"] = json!({POOL_LABEL: ns});
    reserve_storage(&cluster.client, &ns, job, &scene_storage).await;
    let started = now();
    let (ok, out) = cluster
        .kubectl(&["apply", "-n", &ns, "-f", "-"], &manifest.to_string())
        .await;
    assert!(ok, "{out}");

    let status_of = |what: &'static str,
                     timeout: Duration,
                     check: fn(&rlhf_operator::crd::RLHFJobStatus) -> bool| {
        common::wait_for_status_within(&cluster.client, &ns, job, what, timeout, check)
    };
    status_of("ppo running", Duration::from_secs(300), |s| {
        common::stage_phase(s, "ppo") == Some(StagePhase::Running)
    })
    .await;
    wait_for_step(
        &scene_storage.join(&ns).join(job).join("ppo"),
        6,
        Duration::from_secs(300),
    )
    .await;
    let pgid = agent
        .pod_process(&ns, &format!("{job}-ppo-0"))
        .expect("ppo's process");
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL)
        .expect("killing ppo");
    let done = status_of("finished", Duration::from_secs(600), |s| {
        matches!(s.phase, Some(JobPhase::Succeeded | JobPhase::Failed))
    })
    .await;
    assert_eq!(
        done.phase,
        Some(JobPhase::Succeeded),
        "under the chart's RBAC: {done:?}\noperator log: {}",
        operator.log_text()
    );
    assert_eq!(
        done.stages
            .iter()
            .find(|s| s.name == "ppo")
            .map(|s| s.restarts),
        Some(1)
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // a few more scrapes of the operator
    let ended = now();
    discovery.abort();

    // Every trainer metric of docs/ARCHITECTURE.md#metrics was scraped, with its labels.
    let names = prometheus.metric_names().expect("metric names");
    for metric in chart::TRAINER_METRICS {
        assert!(
            names.iter().any(|n| n == metric),
            "{metric} was not scraped; targets: {}",
            prometheus.targets()
        );
    }
    let step = prometheus.query_range(&format!("rlhf_trainer_step{{namespace=\"{ns}\",rlhf_job=\"{job}\",stage=\"ppo\",rank=\"1\"}}"), started, ended, "2s").unwrap();
    assert!(
        !step.is_empty(),
        "rank 1's step, labelled per docs/ARCHITECTURE.md#metrics"
    );
    // Every dashboard query returns data for this job.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let expr = substitute(expr, &ns, job);
        match prometheus.query_range(&expr, started, ended, "2s") {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("{title}: {expr} (no data)")),
            Err(e) => empty.push(format!("{title}: {e}")),
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // Take away pod creation: the next job fails visibly, and the operator keeps running.
    let roles: Api<ClusterRole> = Api::all(cluster.client.clone());
    let mut role = roles.get(&role_name).await.unwrap();
    for rule in role.rules.iter_mut().flatten() {
        if rule.resources.iter().flatten().any(|r| r == "pods") {
            rule.verbs.retain(|v| v != "create");
        }
    }
    roles
        .patch(
            &role_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": role.rules})),
        )
        .await
        .unwrap();
    let mut second = manifest.clone();
    second["metadata"]["name"] = json!("denied");
    second["spec"]["scheduling"] = json!({"gang": "none"});
    let (ok, out) = cluster
        .kubectl(&["apply", "-n", &ns, "-f", "-"], &second.to_string())
        .await;
    assert!(ok, "{out}");
    let metrics_url = format!("http://{operator_addr}/metrics");
    wait_until(
        "a forbidden reconcile error in the operator's metrics",
        Duration::from_secs(60),
        || {
            let url = metrics_url.clone();
            async move {
                let text = std::process::Command::new("curl")
                    .args(["-sf", &url])
                    .output()
                    .map_err(|e| e.to_string())?
                    .stdout;
                let text = String::from_utf8_lossy(&text).into_owned();
                let forbidden = text.lines().find(|l| {
                    l.starts_with("rlhf_operator_reconcile_errors_total{category=\"forbidden\"}")
                });
                Ok(forbidden
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .filter(|n| *n >= 1.0)
                    .map(|_| ()))
            }
        },
    )
    .await;
    let log = operator.log_text();
    assert!(
        log.contains("forbidden") && log.contains("pods"),
        "the log names the refused request:\n{log}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        operator.is_running(),
        "the operator keeps running (no crash loop)"
    );
}
