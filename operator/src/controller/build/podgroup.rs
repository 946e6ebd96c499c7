//! The PodGroup a batch scheduler (Volcano, or scheduler-plugins' coscheduling) admits a stage's
//! gang through, and what the gang's pods carry so that scheduler picks them up.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use serde_json::{Map, Value, json};

use super::meta;
use crate::controller::validate::ValidatedJob;
use crate::crd::GangMode;
use crate::names;

/// How a pod names the PodGroup it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Annotation(&'static str),
    Label(&'static str),
}

/// A batch scheduler's PodGroup API and what its pods must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchScheduler {
    /// The `spec.scheduling.gang` value that selects it.
    pub mode: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    /// The pods' `spec.schedulerName`.
    pub scheduler_name: &'static str,
    pub membership: Membership,
}

/// Volcano: `scheduling.volcano.sh/v1beta1` PodGroup; pods name it in an annotation.
pub const VOLCANO: BatchScheduler = BatchScheduler {
    mode: "volcano",
    group: "scheduling.volcano.sh",
    version: "v1beta1",
    scheduler_name: "volcano",
    membership: Membership::Annotation("scheduling.k8s.io/group-name"),
};

/// scheduler-plugins' coscheduling: `scheduling.x-k8s.io/v1alpha1` PodGroup; pods name it in a
/// label. The scheduler name is the default of that project's Helm chart (`scheduler.name`).
pub const COSCHEDULING: BatchScheduler = BatchScheduler {
    mode: "coscheduling",
    group: "scheduling.x-k8s.io",
    version: "v1alpha1",
    scheduler_name: "scheduler-plugins-scheduler",
    membership: Membership::Label("scheduling.x-k8s.io/pod-group"),
};

pub const POD_GROUP_KIND: &str = "PodGroup";
pub const POD_GROUP_PLURAL: &str = "podgroups";

impl BatchScheduler {
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// Name of the PodGroup CRD this scheduler installs.
    pub fn crd_name(&self) -> String {
        format!("{POD_GROUP_PLURAL}.{}", self.group)
    }

    /// The PodGroup resource, for a dynamic (untyped) API.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: POD_GROUP_KIND.into(),
            plural: POD_GROUP_PLURAL.into(),
        }
    }

    /// Marks a pod of the gang `group` as a member (the scheduler name is set in the pod spec).
    pub fn mark_member(&self, metadata: &mut ObjectMeta, group: &str) {
        let (map, key) = match self.membership {
            Membership::Annotation(key) => (&mut metadata.annotations, key),
            Membership::Label(key) => (&mut metadata.labels, key),
        };
        map.get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), group.to_string());
    }
}

/// The batch scheduler a gang mode hands admission to; None for native and none.
pub fn batch_scheduler(mode: GangMode) -> Option<&'static BatchScheduler> {
    match mode {
        GangMode::Volcano => Some(&VOLCANO),
        GangMode::Coscheduling => Some(&COSCHEDULING),
        GangMode::Native | GangMode::None => None,
    }
}

/// The stage's PodGroup: the whole gang (minMember = its pods) with the resources of all its pods
/// (minResources), so the scheduler binds all of them or none. None for native/none mode and
/// unknown stages.
pub fn pod_group(job: &ValidatedJob, stage: &str) -> Option<DynamicObject> {
    let scheduler = batch_scheduler(job.scheduling.gang)?;
    let s = job.stage(stage)?;
    let members = s.resolved.parallelism.nodes;
    let mut spec = Map::new();
    spec.insert("minMember".into(), json!(members));
    let total = gang_requests(&s.resources, members);
    if !total.is_empty() {
        spec.insert("minResources".into(), json!(total));
    }
    if scheduler == &VOLCANO {
        if let Some(queue) = &job.scheduling.queue {
            spec.insert("queue".into(), json!(queue));
        }
        if let Some(priority) = &job.pod.priority_class {
            spec.insert("priorityClassName".into(), json!(priority));
        }
    } else {
        // int32 in the scheduler's API; the spec only asks for at least 1.
        let timeout = i32::try_from(job.scheduling.timeout_seconds).unwrap_or(i32::MAX);
        spec.insert("scheduleTimeoutSeconds".into(), json!(timeout));
    }
    Some(DynamicObject {
        types: Some(TypeMeta {
            api_version: scheduler.api_version(),
            kind: POD_GROUP_KIND.into(),
        }),
        metadata: meta(
            job,
            names::pod_group(&job.name, stage),
            names::stage_labels(&job.name, stage),
        ),
        data: json!({ "spec": Value::Object(spec) }),
    })
}

/// What `members` identical pods with `resources` request in all: a container's request, or its
/// limit where it gives no request (Kubernetes' defaulting). Quantities that do not parse are
/// left out (the API server rejects such pods anyway).
fn gang_requests(resources: &ResourceRequirements, members: u32) -> BTreeMap<String, Quantity> {
    let mut per_pod = resources.limits.clone().unwrap_or_default();
    per_pod.extend(resources.requests.clone().unwrap_or_default());
    per_pod
        .into_iter()
        .filter_map(|(name, q)| Some((name, times(&q, members)?)))
        .collect()
}

/// `q` x `n`, exactly, keeping `q`'s suffix: "500m" x 3 = "1500m", "1.5Gi" x 2 = "3.0Gi".
fn times(q: &Quantity, n: u32) -> Option<Quantity> {
    let text = q.0.trim().trim_start_matches('+');
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !is_suffix(suffix) {
        return None;
    }
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let product = digits.checked_mul(u128::from(n))?.to_string();
    let scale = fraction.len();
    let padded = format!("{product:0>width$}", width = scale + 1);
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    let number = if scale == 0 {
        int_part.to_string()
    } else {
        format!("{int_part}.{frac_part}")
    };
    Some(Quantity(format!("{number}{suffix}")))
}

/// A Kubernetes quantity suffix: binary (Ki..Ei), decimal (n, u, m, k, M..E) or an exponent (e3, E-2).
fn is_suffix(s: &str) -> bool {
    const UNITS: &[&str] = &[
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    if UNITS.contains(&s) {
        return true;
    }
    let Some(exp) = s.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn quantities_multiply_exactly_and_keep_their_suffix() {
        let cases = [
            ("4", 3, "12"),
            ("500m", 3, "1500m"),
            ("1.5Gi", 2, "3.0Gi"),
            ("0.25", 4, "1.00"),
            (".5", 3, "1.5"),
            ("2e3", 2, "4e3"),
            ("1E-2", 5, "5E-2"),
            ("+8Gi", 2, "16Gi"),
        ];
        for (given, n, want) in cases {
            assert_eq!(times(&q(given), n), Some(q(want)), "{given} x {n}");
        }
        for bad in ["", "Gi", "abc", "1.2.3", "-1", "5Xi", "1e"] {
            assert_eq!(times(&q(bad), 2), None, "{bad:?}");
        }
    }

    #[test]
    fn gang_requests_default_to_limits() {
        let resources = ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("nvidia.com/gpu".into(), q("2")),
                ("memory".into(), q("8Gi")),
            ])),
            requests: Some(BTreeMap::from([
                ("nvidia.com/gpu".into(), q("2")),
                ("cpu".into(), q("500m")),
            ])),
            ..Default::default()
        };
        let want = BTreeMap::from([
            ("nvidia.com/gpu".into(), q("6")),
            ("memory".into(), q("24Gi")),
            ("cpu".into(), q("1500m")),
        ]);
        assert_eq!(gang_requests(&resources, 3), want);
    }
}
