//! Test fixtures shared by the controller's unit tests: a spec wrapped into an RLHFJob.
use serde_json::{Value, json};

use super::validate::{ValidatedJob, validate};
use crate::crd::RLHFJob;

pub const TEST_NAMESPACE: &str = "team-a";
pub const TEST_UID: &str = "5f1e-uid";

/// An RLHFJob named `name` in team-a with `spec`.
pub fn job_named(name: &str, spec: Value) -> RLHFJob {
    serde_json::from_value(json!({
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name, "namespace": TEST_NAMESPACE, "uid": TEST_UID},
        "spec": spec,
    }))
    .expect("test job deserializes")
}

/// Job "chat" with `spec`, which must be valid.
pub fn validated(spec: Value) -> ValidatedJob {
    validate(&job_named("chat", spec)).expect("test job is valid")
}
