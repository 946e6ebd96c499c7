use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};

use super::meta;
use crate::controller::validate::{Claim, ValidatedJob};
use crate::crd::AccessMode;
use crate::names;

/// The job's output volume, when the operator owns it (None for an existing claim).
pub fn storage_claim(job: &ValidatedJob) -> Option<PersistentVolumeClaim> {
    let Claim::Owned {
        name,
        size,
        storage_class,
        access_modes,
    } = &job.claim
    else {
        return None;
    };
    Some(PersistentVolumeClaim {
        metadata: meta(job, name.clone(), names::job_labels(&job.name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                access_modes
                    .iter()
                    .map(|m| access_mode(*m).to_string())
                    .collect(),
            ),
            storage_class_name: storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn access_mode(m: AccessMode) -> &'static str {
    match m {
        AccessMode::ReadWriteOnce => "ReadWriteOnce",
        AccessMode::ReadWriteMany => "ReadWriteMany",
        AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
    }
}
