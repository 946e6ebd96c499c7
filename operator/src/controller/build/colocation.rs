//! A job whose volume only one node can mount (a ReadWriteOnce claim the operator makes) keeps all
//! of its pods on one node, so stages that run at once (sft and rm) can both mount it: every pod
//! gets a required pod affinity to the job's own pods per hostname. The scheduler lets the first
//! pod go anywhere (it matches its own term) and the others follow it; finished pods no longer
//! count, so a later stage may move. Admission reads the term back (`colocated_job`) to count a
//! job's GPUs on the node its pods share.
use k8s_openapi::api::core::v1::{Affinity, Pod, PodAffinity, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::controller::validate::{Claim, ValidatedJob};
use crate::crd::AccessMode;
use crate::names;

pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// Whether the job's pods must share one node: its volume is an operator-made claim that no
/// access mode lets several nodes mount. (An existing claim is the user's to place.)
fn single_node_storage(job: &ValidatedJob) -> bool {
    matches!(&job.claim, Claim::Owned { access_modes, .. } if !access_modes.contains(&AccessMode::ReadWriteMany))
}

/// How admission names a colocated job.
fn job_key(namespace: &str, job: &str) -> String {
    format!("{namespace}/{job}")
}

/// `<namespace>/<job>` when the job's pods must share one node.
pub fn colocation_of(job: &ValidatedJob) -> Option<String> {
    single_node_storage(job).then(|| job_key(&job.namespace, &job.name))
}

fn colocation_term(job: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some([(names::LABEL_JOB.to_string(), job.to_string())].into()),
            ..Default::default()
        }),
        topology_key: HOSTNAME_TOPOLOGY.into(),
        ..Default::default()
    }
}

/// The pod's affinity: the user's, plus the colocation term when the job needs one.
pub fn pod_affinity(job: &ValidatedJob) -> Option<Affinity> {
    if !single_node_storage(job) {
        return job.pod.affinity.clone();
    }
    let mut affinity = job.pod.affinity.clone().unwrap_or_default();
    let pod_affinity = affinity
        .pod_affinity
        .get_or_insert_with(PodAffinity::default);
    pod_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_default()
        .push(colocation_term(&job.name));
    Some(affinity)
}

/// `<namespace>/<job>` when the pod carries its job's colocation term.
pub fn colocated_job(pod: &Pod) -> Option<String> {
    let job = pod.labels().get(names::LABEL_JOB)?;
    let affinity = pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .pod_affinity
        .as_ref()?;
    let terms = affinity
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    terms
        .contains(&colocation_term(job))
        .then(|| job_key(&pod.namespace().unwrap_or_default(), job))
}
