//! `rlhf-bench-scale`: N RLHFJobs of P pods each through the operator, against a plain sequential
//! loop of direct creates of the same N x P pods, on the same control plane in the same run.
//! The ratio of the two times is the figure: what the operator's reconcile adds on top of the
//! API server's own cost of creating the pods. See `make bench` and bench/results/.
mod report;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource};
use rlhf_operator::controller::{build, validate};
use rlhf_operator::crd::RLHFJob;
use rlhf_operator::names;
use rlhf_test_support::{OperatorProcess, TestCluster};
use serde_json::json;

use crate::report::{Direct, Operator, Report};

/// The one stage of every benchmark job.
const STAGE: &str = "sft";
/// An existing claim named by every job (`spec.storage.claimName`), so the operator creates no PVCs
/// and both runs create exactly the same pods.
const CLAIM: &str = "bench-storage";
/// Longest wait for the operator's pods; the run fails beyond it.
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(
    name = "rlhf-bench-scale",
    about = "Pods through the operator vs direct pod creates"
)]
struct Args {
    /// Kubeconfig of the control plane to measure (a throw-away one: it gets a lot of pods).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Number of RLHFJobs.
    #[arg(long, default_value_t = 100)]
    jobs: u32,
    /// Pods per job: the sft stage's `parallelism.nodes` (one GPU each).
    #[arg(long, default_value_t = 4)]
    pods_per_job: u32,
    /// Rounds of both measurements; the report shows every round and uses the median ratio
    /// (a 2-core machine shared with the control plane gives noisy single runs).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Results folder (scale-<date>.md and .json).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = TestCluster::at(args.kubeconfig.clone()).await?;
    let kubernetes = cluster.client.apiserver_version().await?.git_version;
    let pods = args.jobs * args.pods_per_job;
    println!(
        "{} jobs x {} pods = {pods} pods against Kubernetes {kubernetes}",
        args.jobs, args.pods_per_job
    );

    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let direct_ns = fresh_namespace(&cluster, "bench-direct").await?;
        let direct = direct_creates(&cluster.client, &direct_ns, &args).await?;
        let operator_ns = fresh_namespace(&cluster, "bench-operator").await?;
        let operator = through_operator(&cluster, &operator_ns, &args).await?;
        println!(
            "round {round}: direct {pods} pods in {:.2} s; operator {:.2} s (ratio {:.2}), peak RSS {:.1} MiB",
            direct.seconds,
            operator.seconds_to_pods,
            operator.seconds_to_pods / direct.seconds,
            operator.peak_rss_mib
        );
        // Finish the clean-up before the next round so it does not load the API server.
        for ns in [&direct_ns, &operator_ns] {
            delete_namespace(&cluster.client, ns).await?;
        }
        rounds.push((direct, operator));
    }
    let report = Report::new(kubernetes, args.jobs, args.pods_per_job, rounds);
    let (md, json) = report.write(&args.out)?;
    println!(
        "median ratio operator/direct: {:.2}\nwrote {} and {}",
        report.ratio(),
        md.display(),
        json.display()
    );
    Ok(())
}

async fn delete_namespace(client: &Client, ns: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(ns, &DeleteParams::background()).await?;
    poll(TIMEOUT, "the namespace to be deleted", || async {
        Ok(namespaces.get_opt(ns).await?.is_none())
    })
    .await
}

/// A namespace of its own with the shared claim every job names.
async fn fresh_namespace(cluster: &TestCluster, prefix: &str) -> Result<String> {
    let ns = cluster.namespace(prefix).await;
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), &ns)
        .create(&PostParams::default(), &claim)
        .await?;
    Ok(ns)
}

/// Job `i`: one sft stage on a tiny random gpt2, `nodes` pods of one GPU each, the shared claim.
fn job(i: u32, ns: &str, nodes: u32) -> Result<RLHFJob> {
    let training = json!({"batchSize": 8 * nodes, "microBatchSize": 4, "maxLength": 64});
    Ok(serde_json::from_value(json!({
        "apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
        "metadata": {"name": format!("bench-{i}"), "namespace": ns},
        "spec": {
            "image": "registry.example/rlhf-trainer:bench",
            "model": {"family": "gpt2", "init": "random",
                      "architecture": {"vocabSize": 50257, "hiddenSize": 64, "numLayers": 2, "numHeads": 4, "maxPositions": 128}},
            "parallelism": {"nodes": nodes, "gpusPerNode": 1},
            "storage": {"claimName": CLAIM},
            // No GPU nodes here: measure creation, not admission (gangs would wait for GPUs).
            "scheduling": {"gang": "none"},
            "stages": [{"name": STAGE, "kind": "sft", "dataset": {"synthetic": {"task": "copy", "samples": 64}}, "training": training}]
        }
    }))?)
}

/// The baseline: the operator's own pods for every job (built by the operator's pure build step,
/// before the clock starts), created one after another with plain POSTs.
async fn direct_creates(client: &Client, ns: &str, args: &Args) -> Result<Direct> {
    let mut pods = Vec::new();
    for i in 0..args.jobs {
        let valid = validate::validate(&job(i, ns, args.pods_per_job)?).map_err(|e| {
            anyhow!(
                "the bench job is invalid: {}",
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let gang = build::gang(&valid, STAGE, 0).context("the bench job has its stage")?;
        // No job object exists here to own them (and an owner needs a uid).
        pods.extend(gang.pods.into_iter().map(|mut p| {
            p.metadata.owner_references = None;
            p
        }));
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    for pod in &pods {
        api.create(&PostParams::default(), pod).await?;
    }
    Ok(Direct {
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Starts the operator on `ns`, creates the jobs, and times the pods' arrival and the jobs' first status.
async fn through_operator(cluster: &TestCluster, ns: &str, args: &Args) -> Result<Operator> {
    let mut operator = OperatorProcess::start(&cluster.kubeconfig, ns);
    poll(Duration::from_secs(30), "the operator to start", || async {
        Ok(operator.log_text().contains("rlhf-operator started"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // let its watches open
    let jobs: Api<RLHFJob> = Api::namespaced(cluster.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let want = (args.jobs * args.pods_per_job) as usize;

    let start = Instant::now();
    for i in 0..args.jobs {
        jobs.create(&PostParams::default(), &job(i, ns, args.pods_per_job)?)
            .await?;
    }
    let seconds_to_creates = start.elapsed().as_secs_f64();
    poll(TIMEOUT, "every pod", || async {
        Ok(pods
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len()
            >= want)
    })
    .await?;
    let seconds_to_pods = start.elapsed().as_secs_f64();
    poll(TIMEOUT, "every job's status", || async {
        Ok(jobs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .all(|j| j.status.as_ref().is_some_and(|s| s.phase.is_some())))
    })
    .await?;
    let seconds_to_statuses = start.elapsed().as_secs_f64();

    let pid = operator.pid().context("the operator is running")?;
    let peak_rss_mib = vm_hwm_kib(pid)? as f64 / 1024.0;
    operator.kill().await;
    let ours = ListParams::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::FIELD_MANAGER
    ));
    Ok(Operator {
        seconds_to_creates,
        seconds_to_pods,
        seconds_to_statuses,
        peak_rss_mib,
        services: count::<Service>(&cluster.client, ns, &ours).await?,
        config_maps: count::<ConfigMap>(&cluster.client, ns, &ours).await?,
        events: count::<Event>(
            &cluster.client,
            ns,
            &ListParams::default().fields("involvedObject.kind=RLHFJob"),
        )
        .await?,
    })
}

/// Checks `done` every 100 ms until it holds; fails after `timeout` naming `what`.
async fn poll<F, Fut>(timeout: Duration, what: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !done().await? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Objects of kind K in `ns` that `params` selects.
async fn count<K>(client: &Client, ns: &str, params: &ListParams) -> Result<usize>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(params)
        .await?
        .items
        .len())
}

/// The process's peak resident set size (VmHWM) in KiB.
fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM in /proc/<pid>/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}
