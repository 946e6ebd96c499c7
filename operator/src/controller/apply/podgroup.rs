//! Server-side apply of a stage's PodGroup (gang: volcano or coscheduling) through an untyped API,
//! since the operator does not depend on either scheduler's types.
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};

use super::Applier;
use crate::controller::build::{self, BatchScheduler};
use crate::controller::validate::ValidatedJob;
use crate::error::{Error, Result};
use crate::names;

impl Applier<'_> {
    /// Applies the stage's PodGroup before its pods, so the batch scheduler sees the whole gang's
    /// size when the first pod arrives. Nothing to do in native/none mode.
    pub async fn ensure_pod_group(&self, job: &ValidatedJob, stage: &str) -> Result<()> {
        let (Some(scheduler), Some(group)) = (
            build::batch_scheduler(job.scheduling.gang),
            build::pod_group(job, stage),
        ) else {
            return Ok(());
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            self.namespace,
            &scheduler.api_resource(),
        );
        let params = PatchParams::apply(names::FIELD_MANAGER).force();
        let name = names::pod_group(&job.name, stage);
        api.patch(&name, &params, &Patch::Apply(&group))
            .await
            .map_err(|e| missing_crd(e, scheduler))?;
        self.metrics
            .objects_applied
            .with_label_values(&["PodGroup"])
            .inc();
        Ok(())
    }

    /// Deletes the PodGroup of a stage that is no longer in the spec (the job's other PodGroups
    /// stay; all go with the job through their owner reference). Absent is fine.
    pub async fn delete_pod_group(&self, job: &ValidatedJob, stage: &str) -> Result<()> {
        let Some(scheduler) = build::batch_scheduler(job.scheduling.gang) else {
            return Ok(());
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            self.namespace,
            &scheduler.api_resource(),
        );
        match api
            .delete(
                &names::pod_group(&job.name, stage),
                &DeleteParams::background(),
            )
            .await
        {
            Ok(_) => {
                self.metrics
                    .objects_deleted
                    .with_label_values(&["PodGroup"])
                    .inc();
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A 404 on apply (which creates what is absent) means the API server does not serve the
/// PodGroup resource at all: the scheduler's CRD is not installed.
fn missing_crd(err: kube::Error, scheduler: &BatchScheduler) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 404 => Error::PodGroupCrdMissing {
            mode: scheduler.mode,
            crd: scheduler.crd_name(),
            api_version: scheduler.api_version(),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn a_missing_crd_is_named_with_the_mode() {
        let not_found = kube::Error::Api(
            Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(404)
            .boxed(),
        );
        let err = missing_crd(not_found, &build::VOLCANO);
        assert_eq!(err.category(), "crd_missing");
        assert_eq!(
            err.to_string(),
            "spec.scheduling.gang: volcano needs the CRD podgroups.scheduling.volcano.sh (scheduling.volcano.sh/v1beta1 PodGroup), \
             which the cluster does not serve; install that scheduler or choose another gang mode"
        );
        let not_found = kube::Error::Api(
            Status::failure("not found", "NotFound")
                .with_code(404)
                .boxed(),
        );
        assert!(
            missing_crd(not_found, &build::COSCHEDULING)
                .to_string()
                .contains("gang: coscheduling needs the CRD podgroups.scheduling.x-k8s.io")
        );

        let conflict = kube::Error::Api(
            Status::failure("conflict", "Conflict")
                .with_code(409)
                .boxed(),
        );
        assert_eq!(
            missing_crd(conflict, &build::VOLCANO).category(),
            "conflict"
        );
    }
}
