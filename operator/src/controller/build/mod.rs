//! (pure) ValidatedJob -> the Kubernetes objects of a job. Every function here is deterministic,
//! so applying its output again changes nothing (idempotent reconcile).
mod colocation;
mod config;
mod pod;
mod podgroup;
mod service;
mod storage;

pub use colocation::{colocated_job, colocation_of};
pub use config::config_map;
pub use pod::{Gang, gang};
pub use podgroup::{BatchScheduler, COSCHEDULING, Membership, VOLCANO, batch_scheduler, pod_group};
pub use service::headless_service;
pub use storage::storage_claim;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::validate::ValidatedJob;

/// Controller owner reference: the garbage collector deletes the object with the job.
fn owner(job: &ValidatedJob) -> OwnerReference {
    OwnerReference {
        api_version: "rlhf.dev/v1alpha1".into(),
        kind: "RLHFJob".into(),
        name: job.name.clone(),
        uid: job.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(job: &ValidatedJob, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(job.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner(job)]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
