//! rlhf-node-agent: a test-only stand-in for the kubelet. It registers fake GPU Nodes and moves
//! pods that the scheduler bound to them through Running to Succeeded, so demos and tests can
//! watch the operator drive a pipeline without containers. It runs no trainer (yet).
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rlhf_test_support::kubelet::{PodOutcome, mark_node_ready, register_node, set_pod};

#[derive(Parser, Debug)]
#[command(about = "Test-only kubelet stand-in: fake GPU nodes that run pods to completion")]
struct Args {
    /// Node name prefix; nodes are <prefix>-0 .. <prefix>-(N-1).
    #[arg(long, default_value = "gpu-node")]
    prefix: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// nvidia.com/gpu per node.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Seconds a pod stays Running before it is marked Succeeded.
    #[arg(long, default_value_t = 5)]
    run_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let client = Client::try_default().await?;
    let names: Vec<String> = (0..args.nodes).map(|i| format!("{}-{i}", args.prefix)).collect();
    for name in &names {
        register_node(&client, name, args.gpus, BTreeMap::new()).await?;
        tracing::info!(node = %name, gpus = args.gpus, "node registered");
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let mut running_since: HashMap<(String, String), Instant> = HashMap::new();
    let mut last_heartbeat = Instant::now();
    loop {
        if last_heartbeat.elapsed() > Duration::from_secs(20) {
            for name in &names {
                mark_node_ready(&nodes, name, args.gpus).await?;
            }
            last_heartbeat = Instant::now();
        }
        for pod in pods.list(&ListParams::default()).await? {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if !names.contains(&node) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let key = (ns, pod.name_any());
            match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Pending") | None => {
                    set_pod(&api, &key.1, PodOutcome::Running).await?;
                    tracing::info!(pod = %key.1, node = %node, "running");
                    running_since.insert(key, Instant::now());
                }
                Some("Running") => {
                    let since = *running_since.entry(key.clone()).or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(args.run_seconds) {
                        set_pod(&api, &key.1, PodOutcome::Succeeded).await?;
                        tracing::info!(pod = %key.1, "succeeded");
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
