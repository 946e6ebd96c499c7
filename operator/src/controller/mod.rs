//! The reconcile pipeline: validate -> build -> apply -> status.
pub mod admission;
pub mod apply;
pub mod build;
mod capacity;
#[cfg(test)]
mod fixtures;
mod gangs;
pub mod observe;
mod progress;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use self::apply::Applier;
use self::observe::ObservedPod;
use self::status::{JobPlan, Observed};
use crate::crd::{JobPhase, RLHFJob};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// The namespaces the operator watches (`[None]`: all of them).
    pub scopes: Vec<Option<String>>,
    /// Serialises gang admission (capacity read -> pods created) across concurrent reconciles.
    pub admission: tokio::sync::Mutex<()>,
}

impl Context {
    /// Every RLHFJob the operator watches.
    pub async fn list_jobs(&self) -> Result<Vec<RLHFJob>> {
        let mut jobs = Vec::new();
        for scope in &self.scopes {
            jobs.extend(
                scoped_api::<RLHFJob>(&self.client, scope)
                    .list(&ListParams::default())
                    .await?
                    .items,
            );
        }
        Ok(jobs)
    }
}

fn scoped_api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until the process is asked to stop: one over all namespaces, or one per
/// namespace in `namespaces`, sharing one context (so gang admission sees one queue).
pub async fn run(client: Client, namespaces: Vec<String>, metrics: Metrics) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let reporter = Reporter {
        controller: names::FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        scopes: scopes.clone(),
        admission: Default::default(),
    });
    let controllers: Vec<Controller<RLHFJob>> = scopes
        .iter()
        .map(|scope| {
            Controller::new(
                scoped_api::<RLHFJob>(&client, scope),
                watcher::Config::default(),
            )
        })
        .collect();
    tokio::spawn(refresh_job_gauges(
        controllers.iter().map(|c| c.store()).collect(),
        ctx.metrics.clone(),
    ));
    let runs = controllers
        .into_iter()
        .zip(&scopes)
        .map(|(controller, scope)| run_one(controller, &client, scope, ctx.clone()));
    futures::future::join_all(runs).await;
}

async fn run_one(
    controller: Controller<RLHFJob>,
    client: &Client,
    scope: &Option<String>,
    ctx: Arc<Context>,
) {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::FIELD_MANAGER
    ));
    // Node changes (a node joins, frees up, or goes NotReady) wake the queued and running jobs.
    let jobs = controller.store();
    let waiting_on_nodes = move |_: Node| {
        jobs.state()
            .into_iter()
            .filter(|j| {
                j.status.as_ref().is_some_and(|s| {
                    matches!(
                        s.phase,
                        Some(JobPhase::Queued | JobPhase::Running | JobPhase::Pending)
                    )
                })
            })
            .map(|j| ObjectRef::from_obj(&*j))
            .collect::<Vec<_>>()
    };
    controller
        .owns(scoped_api::<Pod>(client, scope), owned.clone())
        .owns(scoped_api::<Service>(client, scope), owned.clone())
        .owns(scoped_api::<ConfigMap>(client, scope), owned)
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            waiting_on_nodes,
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                // Already counted and logged by error_policy.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // Watch failures (CRD missing, RBAC): the controller retries; say so loudly.
                Err(e) => tracing::warn!(error = %e, "controller cannot watch or queue objects"),
            }
        })
        .await;
}

/// Keeps the jobs-by-phase and queued-gangs gauges current from the controller's cache.
async fn refresh_job_gauges(
    stores: Vec<kube::runtime::reflector::Store<RLHFJob>>,
    metrics: Metrics,
) {
    loop {
        let state: Vec<Arc<RLHFJob>> = stores.iter().flat_map(|s| s.state()).collect();
        metrics.observe_jobs(&state.iter().map(|j| j.as_ref()).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn error_policy(job: Arc<RLHFJob>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[err.category()])
        .inc();
    tracing::warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(job: Arc<RLHFJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_job(&job, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
        .inc();
    result
}

async fn reconcile_job(job: &RLHFJob, ctx: &Context) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change()); // the garbage collector removes what the job owns
    }
    let (name, namespace) = (job.name_any(), job.namespace().unwrap_or_default());
    let applier = Applier {
        client: &ctx.client,
        namespace: &namespace,
        metrics: &ctx.metrics,
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let observed: Vec<ObservedPod> = pods
        .list(&ListParams::default().labels(&names::job_selector(&name)))
        .await?
        .iter()
        .filter_map(ObservedPod::from_pod)
        .collect();
    let prev = job.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let (no_progress, no_nodes) = (BTreeMap::new(), BTreeSet::new());
    let decision = match validate::validate(job) {
        Err(errors) => {
            tracing::info!(job = %name, namespace = %namespace, problems = errors.len(), "invalid spec");
            let no_hashes = BTreeMap::new();
            let obs = Observed {
                generation: job.metadata.generation,
                pods: &observed,
                desired_hashes: &no_hashes,
                progress: &no_progress,
                not_ready_nodes: &no_nodes,
                now,
            };
            status::decide_invalid(&prev, &errors, &obs)
        }
        Ok(valid) => {
            let hashes: BTreeMap<String, String> = valid
                .stages
                .iter()
                .filter_map(|s| {
                    Some((
                        s.resolved.name.clone(),
                        build::gang(&valid, &s.resolved.name, 0)?.spec_hash,
                    ))
                })
                .collect();
            let not_ready = unready_nodes(ctx, &observed).await?;
            let progress = progress::read_all(&prev.stages, &observed, valid.metrics_port).await;
            let obs = Observed {
                generation: job.metadata.generation,
                pods: &observed,
                desired_hashes: &hashes,
                progress: &progress,
                not_ready_nodes: &not_ready,
                now,
            };
            let mut decision = status::decide(&valid, &prev, &obs);
            gangs::launch(ctx, job, &valid, &applier, &observed, &mut decision, now).await?;
            gangs::clean_up(&applier, &name, &decision, &observed).await?;
            applier
                .delete_orphans(&valid, &orphan_stages(&valid, &prev, &observed))
                .await?;
            decision
        }
    };
    if decision.delete_job {
        tracing::info!(job = %name, namespace = %namespace, "ttlSecondsAfterFinished passed: deleting the job");
        applier.delete_job(&name).await?;
        return Ok(Action::await_change());
    }
    let wake = decision
        .wake_at
        .map(|at| Duration::from_secs(at.duration_since(now).as_secs().clamp(1, 300) as u64));
    publish(job, &prev, decision, &applier, ctx).await?;
    Ok(Action::requeue(wake.unwrap_or(Duration::from_secs(300))))
}

/// The nodes of the job's pods that are not Ready or no longer exist.
async fn unready_nodes(ctx: &Context, observed: &[ObservedPod]) -> Result<BTreeSet<String>> {
    let used: BTreeSet<&str> = observed
        .iter()
        .filter(|p| p.is_active())
        .filter_map(|p| p.node.as_deref())
        .collect();
    if used.is_empty() {
        return Ok(BTreeSet::new());
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut unready = BTreeSet::new();
    for name in used {
        let ready = nodes
            .get_opt(name)
            .await?
            .as_ref()
            .is_some_and(capacity::node_ready);
        if !ready {
            unready.insert(name.to_string());
        }
    }
    Ok(unready)
}

/// Stages that have objects (or a status entry) but are no longer in the spec.
fn orphan_stages(
    job: &validate::ValidatedJob,
    prev: &crate::crd::RLHFJobStatus,
    observed: &[ObservedPod],
) -> BTreeSet<String> {
    let known: BTreeSet<&str> = job
        .stages
        .iter()
        .map(|s| s.resolved.name.as_str())
        .collect();
    prev.stages
        .iter()
        .map(|s| s.name.as_str())
        .chain(observed.iter().map(|p| p.stage.as_str()))
        .filter(|s| !known.contains(s))
        .map(str::to_string)
        .collect()
}

/// Patches the status when it changed, then records the transitions as Events.
async fn publish(
    job: &RLHFJob,
    prev: &crate::crd::RLHFJobStatus,
    decision: JobPlan,
    applier: &Applier<'_>,
    ctx: &Context,
) -> Result<()> {
    if &decision.status != prev {
        applier.patch_status(job, &decision.status).await?;
    }
    let reference = job.object_ref(&());
    let namespace = job.namespace().unwrap_or_default();
    for t in decision.transitions {
        if let Some(stage) = t.action.strip_prefix(status::RESTART_ACTION_PREFIX) {
            ctx.metrics
                .gang_restarts
                .with_label_values(&[namespace.as_str(), &job.name_any(), stage])
                .inc();
        }
        let event = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason,
            note: Some(t.message),
            action: t.action,
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not record event"); // events are best effort
        }
    }
    Ok(())
}
