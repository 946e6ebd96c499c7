//! Ports: every pod here shares one network namespace, so the ports that a real pod binds on
//! the wildcard address (c10d's TCPStore, the trainer's metrics) are swapped for ports the agent
//! hands out, and forwarders on the pod's own address keep the declared ports reachable.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::env::lookup;

/// Label the operator puts on every pod of a gang; a restarted gang gets a new value.
pub const GANG_GENERATION_LABEL: &str = "rlhf.dev/gang-generation";

/// Pods that must see the same MASTER_PORT: (namespace, MASTER_ADDR, gang generation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GangKey {
    pub namespace: String,
    pub master_addr: String,
    pub generation: String,
}

/// The gang of a pod; a pod without MASTER_ADDR is a gang of its own.
pub fn gang_key(
    namespace: &str,
    pod_name: &str,
    env: &[(String, String)],
    labels: &BTreeMap<String, String>,
) -> GangKey {
    GangKey {
        namespace: namespace.to_string(),
        master_addr: lookup(env, "MASTER_ADDR")
            .map_or_else(|| format!("pod/{pod_name}"), str::to_string),
        generation: labels
            .get(GANG_GENERATION_LABEL)
            .cloned()
            .unwrap_or_default(),
    }
}

/// (declared port, agent port) pairs to forward: rank r's declared `original + r` goes to
/// `base + r`, for the ranks whose port the container declares.
pub fn metrics_forwards(
    original: u16,
    base: u16,
    local_world: u16,
    declared: &[i32],
) -> Vec<(u16, u16)> {
    (0..local_world)
        .filter_map(|r| Some((original.checked_add(r)?, base.checked_add(r)?)))
        .filter(|(from, _)| declared.contains(&i32::from(*from)))
        .collect()
}

/// Hands out ports below the kernel's ephemeral range (so outgoing connections never take
/// them), each free when handed out and never handed out twice while reserved.
pub struct PortAllocator {
    range: std::ops::Range<u16>,
    next: u16,
    reserved: HashSet<u16>,
    gangs: HashMap<GangKey, u16>,
}

impl PortAllocator {
    /// Starts at an offset that differs between agents so that agents running side by side
    /// rarely probe the same ports at the same moment.
    pub fn new(range: std::ops::Range<u16>, seed: u32) -> Self {
        let span = u32::from(range.end - range.start).max(1);
        let next = range.start + (seed % span) as u16;
        Self {
            range,
            next,
            reserved: HashSet::new(),
            gangs: HashMap::new(),
        }
    }

    /// The gang's MASTER_PORT: the same for every pod of the gang.
    pub fn master_port(&mut self, key: &GangKey) -> Option<u16> {
        if let Some(port) = self.gangs.get(key) {
            return Some(*port);
        }
        let port = self.block(1, port_is_free)?;
        self.gangs.insert(key.clone(), port);
        Some(port)
    }

    /// `len` consecutive ports, all free according to `is_free`, now reserved.
    pub fn block(&mut self, len: u16, is_free: impl Fn(u16) -> bool) -> Option<u16> {
        let span = self.range.end - self.range.start;
        for _ in 0..span {
            let base = self.next;
            self.next = if base + 1 >= self.range.end {
                self.range.start
            } else {
                base + 1
            };
            let Some(end) = base.checked_add(len).filter(|e| *e <= self.range.end) else {
                continue;
            };
            if (base..end).all(|p| !self.reserved.contains(&p) && is_free(p)) {
                self.reserved.extend(base..end);
                self.next = if end >= self.range.end {
                    self.range.start
                } else {
                    end
                };
                return Some(base);
            }
        }
        None
    }

    pub fn release(&mut self, base: u16, len: u16) {
        for p in base..base.saturating_add(len) {
            self.reserved.remove(&p);
        }
    }
}

/// Nothing listens on the wildcard address at `port` right now.
pub fn port_is_free(port: u16) -> bool {
    StdListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// What the agent changed about a pod's ports (also written to the pod folder's ports.json).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortsRecord {
    pub pod_ip: String,
    /// Set when the pod sets MASTER_PORT.
    pub master_port: Option<Remapped>,
    /// Set when the pod sets RLHF_METRICS_PORT: local rank r serves on `assigned + r`.
    pub metrics_port: Option<Remapped>,
    /// LOCAL_WORLD_SIZE (1 when unset): how many metrics ports were reserved.
    pub local_ranks: u16,
    pub forwards: Vec<Forward>,
}

/// A port variable: the pod's value and the one the agent gave the process instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remapped {
    pub original: u16,
    pub assigned: u16,
}

/// A forwarder: connections to `listen` ("podIP:declared port") go to `target` ("127.0.0.1:P+r").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub listen: String,
    pub target: String,
}

impl PortsRecord {
    /// Variables that replace the pod's own.
    pub fn env_overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(m) = self.master_port {
            out.push(("MASTER_PORT".to_string(), m.assigned.to_string()));
        }
        if let Some(m) = self.metrics_port {
            out.push(("RLHF_METRICS_PORT".to_string(), m.assigned.to_string()));
        }
        out
    }
}

/// Reads a port-valued variable, naming it in the error.
pub fn port_var(env: &[(String, String)], name: &str) -> Result<Option<u16>, String> {
    lookup(env, name)
        .map(|v| {
            v.trim()
                .parse::<u16>()
                .map_err(|_| format!("env {name}={v:?} is not a port number"))
        })
        .transpose()
}

/// Serves `listen` by copying each connection to and from 127.0.0.1:`target`.
pub async fn forward(listen: SocketAddr, target: u16) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn gang_members_share_a_key_and_generations_do_not() {
        let env = vars(&[("MASTER_ADDR", "job-sft-0.job-sft.ns.svc")]);
        let gen0 = BTreeMap::from([(GANG_GENERATION_LABEL.to_string(), "0".to_string())]);
        let gen1 = BTreeMap::from([(GANG_GENERATION_LABEL.to_string(), "1".to_string())]);
        assert_eq!(
            gang_key("ns", "job-sft-0", &env, &gen0),
            gang_key("ns", "job-sft-1", &env, &gen0)
        );
        assert_ne!(
            gang_key("ns", "job-sft-0", &env, &gen0),
            gang_key("ns", "job-sft-0", &env, &gen1)
        );
        assert_ne!(
            gang_key("ns", "a", &env, &gen0),
            gang_key("other", "a", &env, &gen0)
        );
        // Without MASTER_ADDR a pod is its own gang.
        assert_ne!(
            gang_key("ns", "a", &[], &gen0),
            gang_key("ns", "b", &[], &gen0)
        );
    }

    #[test]
    fn forwards_only_declared_rank_ports() {
        assert_eq!(
            metrics_forwards(9400, 21000, 2, &[9400, 9401]),
            vec![(9400, 21000), (9401, 21001)]
        );
        assert_eq!(
            metrics_forwards(9400, 21000, 3, &[9401, 80]),
            vec![(9401, 21001)]
        );
        assert_eq!(metrics_forwards(9400, 21000, 1, &[]), vec![]);
    }

    #[test]
    fn blocks_are_consecutive_free_and_never_handed_out_twice() {
        let mut ports = PortAllocator::new(100..110, 3);
        let a = ports.block(3, |p| p != 104).unwrap();
        assert_eq!(a, 105, "skips a block that contains a busy port");
        let b = ports.block(3, |_| true).unwrap();
        assert!(
            !(a..a + 3).contains(&b) && !(a..a + 3).contains(&(b + 2)),
            "{a} {b}"
        );
        assert_eq!(b, 100, "wraps around");
        assert!(
            ports.block(7, |_| true).is_none(),
            "no 7 unreserved ports in a row"
        );
        ports.release(a, 3);
        assert_eq!(
            ports.block(7, |_| true),
            Some(103),
            "released ports are handed out again"
        );
    }

    #[test]
    fn overrides_and_port_variables() {
        let record = PortsRecord {
            master_port: Some(Remapped {
                original: 29500,
                assigned: 20001,
            }),
            metrics_port: Some(Remapped {
                original: 9400,
                assigned: 20010,
            }),
            ..Default::default()
        };
        assert_eq!(
            record.env_overrides(),
            vars(&[("MASTER_PORT", "20001"), ("RLHF_METRICS_PORT", "20010")])
        );
        assert_eq!(port_var(&vars(&[("P", "9400")]), "P"), Ok(Some(9400)));
        assert_eq!(port_var(&[], "P"), Ok(None));
        assert!(
            port_var(&vars(&[("P", "x")]), "P")
                .unwrap_err()
                .contains("P=\"x\"")
        );
    }
}
