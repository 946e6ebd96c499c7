//! Gang admission (pure): which waiting gangs may start now, given a snapshot of GPU capacity.
//! A gang is admitted only when every one of its pods fits on a node that matches its node
//! selector and whose taints it tolerates, counting the GPUs already requested there, so no
//! partial gang ever holds GPUs. The queue is ordered by priority (higher first), then creation
//! time, then name; admission stops at the first gang that does not fit (a smaller gang behind it
//! does not jump ahead), so big gangs are not starved by a stream of small ones. The gangs of a
//! job whose volume only one node can mount all go to one node: where its pods already are, or
//! where its first gang is placed.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// What a node offers, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeCapacity {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub ready: bool,
    /// `nvidia.com/gpu` allocatable.
    pub gpus: u32,
    /// GPUs requested by the pods bound to the node that are not finished.
    pub gpus_in_use: u32,
    /// Colocated jobs (`<namespace>/<job>`) with unfinished pods on the node.
    pub colocated_jobs: BTreeSet<String>,
}

/// A stage's gang waiting to start.
#[derive(Clone, Debug, PartialEq)]
pub struct GangRequest {
    /// `<namespace>/<job>/<stage>`: unique, and the last tie-breaker.
    pub key: String,
    pub priority: i32,
    /// Creation time of the job (RFC 3339 sorts as text).
    pub created: String,
    pub pods: u32,
    pub gpus_per_pod: u32,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// `<namespace>/<job>` when every gang of the job must share one node (ReadWriteOnce volume).
    pub colocate: Option<String>,
}

/// Admission's verdict for one queued gang.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Start the gang: these nodes (one per pod) have room for it now.
    Admit { nodes: Vec<String> },
    /// Wait: 1-based `position` among the waiting gangs, and why.
    Queued { position: usize, reason: String },
}

/// Whether `toleration` tolerates `taint` (Kubernetes' rules: empty key with Exists matches all;
/// an empty effect matches every effect).
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = toleration.key.as_deref().is_none_or(|k| k.is_empty())
        && toleration.operator.as_deref() == Some("Exists")
        || toleration.key.as_deref() == Some(taint.key.as_str());
    let value_ok = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok && value_ok
}

/// Whether the gang may run on `node` at all (ignoring free GPUs).
pub fn fits_node(gang: &GangRequest, node: &NodeCapacity) -> bool {
    let selected = gang
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let tolerated = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| gang.tolerations.iter().any(|tol| tolerates(tol, t)));
    node.ready && selected && tolerated
}

/// Free GPUs per node, and the node each colocated job is bound to, as gangs are placed.
struct Room {
    free: BTreeMap<String, u32>,
    homes: BTreeMap<String, String>,
}

impl Room {
    fn of(nodes: &[NodeCapacity]) -> Self {
        let free = nodes
            .iter()
            .map(|n| (n.name.clone(), n.gpus.saturating_sub(n.gpus_in_use)))
            .collect();
        let homes = nodes
            .iter()
            .flat_map(|n| {
                n.colocated_jobs
                    .iter()
                    .map(|job| (job.clone(), n.name.clone()))
            })
            .collect();
        Room { free, homes }
    }

    /// The node the gang must use, if its job already has one.
    fn home(&self, gang: &GangRequest) -> Option<&String> {
        gang.colocate.as_ref().and_then(|job| self.homes.get(job))
    }

    /// Whether the gang may use `node` at all: it fits the node, and the node is its job's home
    /// when it has one.
    fn allows(&self, gang: &GangRequest, node: &NodeCapacity) -> bool {
        fits_node(gang, node) && self.home(gang).is_none_or(|home| *home == node.name)
    }

    /// Places the gang's pods on nodes with free GPUs (most free first, so big pods find room);
    /// the chosen node per pod, or None (and nothing taken) when the whole gang does not fit.
    fn place(&mut self, gang: &GangRequest, nodes: &[NodeCapacity]) -> Option<Vec<String>> {
        let mut trial = self.free.clone();
        let mut chosen = Vec::with_capacity(gang.pods as usize);
        for _ in 0..gang.pods {
            let best = nodes
                .iter()
                .filter(|n| self.allows(gang, n) && trial[&n.name] >= gang.gpus_per_pod)
                .max_by(|a, b| {
                    trial[&a.name]
                        .cmp(&trial[&b.name])
                        .then_with(|| b.name.cmp(&a.name))
                })?;
            *trial.get_mut(&best.name).expect("every node has an entry") -= gang.gpus_per_pod;
            chosen.push(best.name.clone());
        }
        self.free = trial;
        if let (Some(job), Some(node)) = (&gang.colocate, chosen.first()) {
            self.homes
                .entry(job.clone())
                .or_insert_with(|| node.clone());
        }
        Some(chosen)
    }
}

/// Counts pods that were created but not bound yet as using GPUs on the nodes they will most
/// likely land on (an admitted gang's pods hold their place before the scheduler binds them).
pub fn reserve_unbound(nodes: &mut [NodeCapacity], unbound: &[GangRequest]) {
    let mut room = Room::of(nodes);
    for pod in unbound {
        for node in room.place(pod, nodes).unwrap_or_default() {
            if let Some(n) = nodes.iter_mut().find(|n| n.name == node) {
                n.gpus_in_use += pod.gpus_per_pod;
                n.colocated_jobs.extend(pod.colocate.clone());
            }
        }
    }
}

/// The order gangs are considered in.
fn queue_order(a: &GangRequest, b: &GangRequest) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.created.cmp(&b.created))
        .then_with(|| a.key.cmp(&b.key))
}

/// One decision per gang of `queue` (in `queue`'s order).
pub fn admit(nodes: &[NodeCapacity], queue: &[GangRequest]) -> Vec<Admission> {
    let mut room = Room::of(nodes);
    let mut order: Vec<usize> = (0..queue.len()).collect();
    order.sort_by(|&a, &b| queue_order(&queue[a], &queue[b]));
    let mut decisions = vec![None; queue.len()];
    let mut blocked: Option<String> = None;
    let mut waiting = 0;
    for i in order {
        let gang = &queue[i];
        let placed = if blocked.is_none() {
            room.place(gang, nodes)
        } else {
            None
        };
        let decision = match placed {
            Some(nodes) => Admission::Admit { nodes },
            None => {
                waiting += 1;
                let reason = match &blocked {
                    Some(first) => format!("waiting behind {first}"),
                    None => unfit_reason(gang, nodes, &room),
                };
                blocked.get_or_insert_with(|| gang.key.clone());
                Admission::Queued {
                    position: waiting,
                    reason,
                }
            }
        };
        decisions[i] = Some(decision);
    }
    decisions
        .into_iter()
        .map(|d| d.expect("every gang decided"))
        .collect()
}

/// Why a gang does not fit now (`room`: what is left after the gangs admitted before it): no
/// eligible node at all, or not enough free GPUs on them (or on its job's node).
fn unfit_reason(gang: &GangRequest, nodes: &[NodeCapacity], room: &Room) -> String {
    let home = room.home(gang);
    let eligible: Vec<&NodeCapacity> = nodes.iter().filter(|n| room.allows(gang, n)).collect();
    let need = gang.pods * gang.gpus_per_pod;
    let free: u32 = eligible.iter().map(|n| room.free[&n.name]).sum();
    let total: u32 = eligible.iter().map(|n| n.gpus).sum();
    match home {
        Some(home) if eligible.is_empty() => {
            format!(
                "the job's other pods are on node {home}, which is not ready or not eligible for the gang; its ReadWriteOnce volume keeps the job on one node"
            )
        }
        Some(home) => format!(
            "needs {} pods x {} GPUs on node {home}, where the job's other pods are (its ReadWriteOnce volume keeps the job on one node); {free} of {total} GPUs free there",
            gang.pods, gang.gpus_per_pod
        ),
        None if eligible.is_empty() => format!(
            "no ready node matches the gang's node selector and tolerations ({need} GPUs needed)"
        ),
        None => format!(
            "needs {} pods x {} GPUs; {free} of {total} GPUs free on {} eligible nodes",
            gang.pods,
            gang.gpus_per_pod,
            eligible.len()
        ),
    }
}

#[cfg(test)]
mod tests;
