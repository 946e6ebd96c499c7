//! Carries out a valid job's decision: admits new gangs (native mode: all or nothing, in queue
//! order), creates their missing pods, and deletes the pods the decision gives up.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::Context;
use super::admission;
use super::apply::Applier;
use super::build;
use super::capacity::{self, Priorities};
use super::observe::ObservedPod;
use super::status::JobPlan;
use super::validate::ValidatedJob;
use crate::crd::{GangMode, RLHFJob};
use crate::error::Result;

/// Stages whose gang is new (none of its pods exist yet) and so needs admission.
fn new_gangs(decision: &JobPlan, observed: &[ObservedPod]) -> Vec<String> {
    decision
        .launch
        .iter()
        .filter(|stage| !observed.iter().any(|p| &p.stage == *stage))
        .cloned()
        .collect()
}

/// Runs native admission for the job's new gangs; marks each admitted or queued in `decision`.
/// Held under the context's admission lock by the caller, so two jobs never both take the same GPUs.
async fn admit_native(
    ctx: &Context,
    job: &RLHFJob,
    valid: &ValidatedJob,
    stages: &[String],
    decision: &mut JobPlan,
    now: Timestamp,
) -> Result<()> {
    let nodes = capacity::nodes_with_usage(&ctx.client).await?;
    let priorities = Priorities::read(&ctx.client).await?;
    let created = capacity::created_at(job);
    let ours: Vec<_> = stages
        .iter()
        .filter_map(|s| capacity::gang_request(valid, s, priorities.of(valid), &created))
        .collect();
    let mut queue = capacity::queued_elsewhere(&ctx.list_jobs().await?, valid, &priorities);
    let first_ours = queue.len();
    queue.extend(ours);
    let decisions = admission::admit(&nodes, &queue);
    for (stage, d) in stages.iter().zip(&decisions[first_ours..]) {
        match d {
            admission::Admission::Admit { nodes: placed } => {
                let waited = decision.admitted(stage, now);
                ctx.metrics.admission_wait.observe(waited);
                tracing::info!(job = %valid.name, stage, nodes = ?placed, waited_seconds = waited, "gang admitted");
            }
            admission::Admission::Queued { position, reason } => {
                tracing::info!(job = %valid.name, stage, position, reason, "gang queued");
                decision.queued(stage, *position, reason, now);
            }
        }
    }
    Ok(())
}

/// Admits (when the gang mode asks for it) and creates the gangs the decision launches.
pub async fn launch(
    ctx: &Context,
    job: &RLHFJob,
    valid: &ValidatedJob,
    applier: &Applier<'_>,
    observed: &[ObservedPod],
    decision: &mut JobPlan,
    now: Timestamp,
) -> Result<()> {
    let fresh = new_gangs(decision, observed);
    // Held from reading capacity until the pods exist, so concurrent reconciles never admit two
    // gangs into the same free GPUs.
    let _admission = ctx.admission.lock().await;
    if valid.scheduling.gang == GangMode::Native && !fresh.is_empty() {
        admit_native(ctx, job, valid, &fresh, decision, now).await?;
    } else {
        for stage in decision.launch.clone() {
            let _no_queue = decision.admitted(&stage, now);
        }
    }
    let existing: BTreeSet<&str> = observed.iter().map(|o| o.name.as_str()).collect();
    let generations: BTreeMap<&str, u32> = decision
        .status
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.gang_generation))
        .collect();
    let gangs: Vec<build::Gang> = decision
        .launch
        .iter()
        .filter_map(|stage| {
            build::gang(
                valid,
                stage,
                generations.get(stage.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    let mut storage_ready = false;
    for gang in &gangs {
        // Only missing pods are created: a complete gang costs no API call.
        let missing: Vec<&Pod> = gang
            .pods
            .iter()
            .filter(|p| !existing.contains(p.name_any().as_str()))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if !storage_ready {
            applier.ensure_storage(valid).await?;
            storage_ready = true;
        }
        applier.ensure_pod_group(valid, &gang.stage).await?;
        applier.ensure_gang(valid, &gang.stage, missing).await?;
    }
    Ok(())
}

/// Deletes the pods the decision gives up (gang restarts, suspension, failed gangs, clean-up).
pub async fn clean_up(
    applier: &Applier<'_>,
    job: &str,
    decision: &JobPlan,
    observed: &[ObservedPod],
) -> Result<()> {
    for (stage, cleanup) in &decision.cleanup {
        // Nothing to do when every pod of the stage is already on its way out.
        if observed.iter().any(|p| &p.stage == stage && !p.deleting) {
            applier.delete_stage_pods(job, stage, *cleanup).await?;
        }
    }
    Ok(())
}
