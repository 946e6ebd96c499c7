//! Writes to the API server: server-side apply of desired objects, deletion of orphans, status.
mod podgroup;
use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build;
use super::status::Cleanup;
use super::validate::ValidatedJob;
use crate::crd::{RLHFJob, RLHFJobStatus};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::names;

/// Pod creations in flight per gang.
const POD_CREATE_CONCURRENCY: usize = 8;

pub struct Applier<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    pub metrics: &'a Metrics,
}

impl Applier<'_> {
    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        &self,
    ) -> Api<K> {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    /// Server-side apply with our field manager; re-applying the same object is a no-op.
    async fn apply<K>(&self, obj: &K) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let params = PatchParams::apply(names::FIELD_MANAGER).force();
        self.api::<K>()
            .patch(&obj.name_any(), &params, &Patch::Apply(obj))
            .await?;
        self.metrics
            .objects_applied
            .with_label_values(&[&K::kind(&())])
            .inc();
        if K::kind(&()) == "Pod" {
            self.metrics.pods_created.inc(); // pods are only ever created (never re-applied)
        }
        Ok(())
    }

    /// Creates the job's claim once; it is never re-applied, because most PVC fields are
    /// immutable and the volume must outlive spec edits.
    pub async fn ensure_storage(&self, job: &ValidatedJob) -> Result<()> {
        let Some(pvc) = build::storage_claim(job) else {
            return Ok(());
        };
        if self
            .api::<PersistentVolumeClaim>()
            .get_opt(&pvc.name_any())
            .await?
            .is_some()
        {
            return Ok(());
        }
        self.apply::<PersistentVolumeClaim>(&pvc).await
    }

    /// Creates the `missing` pods of a stage's gang, after its Service and ConfigMap (pods mount
    /// the config and resolve MASTER_ADDR through the Service).
    pub async fn ensure_gang(
        &self,
        job: &ValidatedJob,
        stage: &str,
        missing: Vec<&Pod>,
    ) -> Result<()> {
        let service = build::headless_service(job, stage);
        let config = build::config_map(job, stage);
        let config_applied = async {
            match &config {
                Some(cm) => self.apply::<ConfigMap>(cm).await,
                None => Ok(()),
            }
        };
        futures::try_join!(self.apply::<Service>(&service), config_applied)?;
        // Pods are independent requests; a few in flight at once cut a gang's start-up latency.
        // (Futures collected first: a closure inside the stream trips the Send check of the controller.)
        let creates: Vec<_> = missing
            .into_iter()
            .map(|pod| self.apply::<Pod>(pod))
            .collect();
        futures::stream::iter(creates)
            .buffer_unordered(POD_CREATE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Deletes the pods, Services, ConfigMaps and PodGroups of stages that are no longer in the spec.
    pub async fn delete_orphans(
        &self,
        job: &ValidatedJob,
        orphan_stages: &BTreeSet<String>,
    ) -> Result<()> {
        for stage in orphan_stages {
            let selector = format!(
                "{},{}={stage}",
                names::job_selector(&job.name),
                names::LABEL_STAGE
            );
            self.delete_labelled::<Pod>(&selector).await?;
            self.delete_labelled::<Service>(&selector).await?;
            self.delete_labelled::<ConfigMap>(&selector).await?;
            self.delete_pod_group(job, stage).await?;
        }
        Ok(())
    }

    /// Deletes a stage's pods (all, or only those still Pending/Running); pods already being
    /// deleted are left alone.
    pub async fn delete_stage_pods(&self, job: &str, stage: &str, cleanup: Cleanup) -> Result<()> {
        let selector = format!(
            "{},{}={stage}",
            names::job_selector(job),
            names::LABEL_STAGE
        );
        let api = self.api::<Pod>();
        for pod in api.list(&ListParams::default().labels(&selector)).await? {
            let finished = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if pod.metadata.deletion_timestamp.is_some()
                || (cleanup == Cleanup::Unfinished && finished)
            {
                continue;
            }
            self.delete_one::<Pod>(&api, &pod.name_any()).await?;
        }
        Ok(())
    }

    /// The job itself (ttlSecondsAfterFinished); what it owns goes with it.
    pub async fn delete_job(&self, job: &str) -> Result<()> {
        self.delete_one::<RLHFJob>(&self.api(), job).await
    }

    async fn delete_one<K>(&self, api: &Api<K>, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                self.metrics
                    .objects_deleted
                    .with_label_values(&[&K::kind(&())])
                    .inc();
                if K::kind(&()) == "Pod" {
                    self.metrics.pods_deleted.inc();
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    async fn delete_labelled<K>(&self, selector: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        for obj in api.list(&ListParams::default().labels(selector)).await? {
            self.delete_one(&api, &obj.name_any()).await?;
        }
        Ok(())
    }

    /// Writes the status decided from `job` as it was read, only if the job has not changed since
    /// (its resourceVersion is the precondition): a decision made from a cached copy that lags
    /// behind our own last status write must not overwrite it; it fails with a conflict and the
    /// reconcile runs again on the fresh object.
    pub async fn patch_status(&self, job: &RLHFJob, status: &RLHFJobStatus) -> Result<()> {
        let name = job.name_any();
        let body = serde_json::json!({
            "apiVersion": "rlhf.dev/v1alpha1", "kind": "RLHFJob",
            "metadata": {"name": name, "resourceVersion": job.resource_version()},
            "status": status,
        });
        let params = PatchParams::apply(names::FIELD_MANAGER).force();
        self.api::<RLHFJob>()
            .patch_status(&name, &params, &Patch::Apply(&body))
            .await?;
        Ok(())
    }
}
