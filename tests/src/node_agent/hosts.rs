//! (pure) Pod addresses and the /etc/hosts a pod sees: the stand-in for cluster DNS.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

/// The loopback address of pod `namespace/name`: 127.A.B.C with A in 1..=254 and C in 1..=254
/// (never 127.0.0.x, where the host's own services live, and never a .0/.255 host part). It
/// depends only on the name, so every agent and every test computes the same address.
pub fn pod_ip(namespace: &str, name: &str) -> Ipv4Addr {
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let a = 1 + digest[0] % 254;
    let c = 1 + digest[2] % 254;
    Ipv4Addr::new(127, a, digest[1], c)
}

/// The container's hostname, as a kubelet sets it: spec.hostname, else the pod name, cut to 63.
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// One hosts line: an address and its names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub names: Vec<String>,
}

/// The names a headless Service gives a pod with spec.hostname + spec.subdomain; None otherwise.
pub fn dns_entry(pod: &Pod) -> Option<HostEntry> {
    let spec = pod.spec.as_ref()?;
    let (host, sub) = (spec.hostname.as_deref()?, spec.subdomain.as_deref()?);
    let ns = pod.namespace()?;
    let names = vec![
        format!("{host}.{sub}.{ns}.svc.cluster.local"),
        format!("{host}.{sub}.{ns}.svc"),
        format!("{host}.{sub}"),
        host.to_string(),
    ];
    Some(HostEntry {
        ip: pod_ip(&ns, &pod.name_any()),
        names,
    })
}

/// Entries for every pod in `namespace` (from `pods`, any namespace) that has a DNS name, sorted.
pub fn namespace_entries<'a>(
    namespace: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<HostEntry> {
    let mut entries: Vec<HostEntry> = pods
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter_map(dns_entry)
        .collect();
    entries.sort();
    entries.dedup();
    entries
}

/// The hosts file of a pod: localhost, the pod's own hostname, then its namespace's DNS names.
pub fn hosts_file(own_ip: Ipv4Addr, own_hostname: &str, peers: &[HostEntry]) -> String {
    let mut text = String::from("# written by rlhf-node-agent (the stand-in for cluster DNS)\n");
    text.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !peers
        .iter()
        .any(|e| e.ip == own_ip && e.names.iter().any(|n| n == own_hostname))
    {
        text.push_str(&format!("{own_ip}\t{own_hostname}\n"));
    }
    for entry in peers {
        text.push_str(&format!("{}\t{}\n", entry.ip, entry.names.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, hostname: Option<&str>, subdomain: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [], "hostname": hostname, "subdomain": subdomain}
        }))
        .unwrap()
    }

    #[test]
    fn addresses_are_stable_loopback_and_never_127_0_0() {
        assert_eq!(pod_ip("team-a", "job-sft-0"), pod_ip("team-a", "job-sft-0"));
        assert_ne!(pod_ip("team-a", "job-sft-0"), pod_ip("team-a", "job-sft-1"));
        assert_ne!(pod_ip("team-a", "job-sft-0"), pod_ip("team-b", "job-sft-0"));
        for i in 0..5000 {
            let ip = pod_ip("ns", &format!("pod-{i}")).octets();
            assert_eq!(ip[0], 127);
            assert!((1..=254).contains(&ip[1]), "{ip:?}");
            assert!((1..=254).contains(&ip[3]), "{ip:?}");
        }
    }

    #[test]
    fn hostname_prefers_spec_hostname_and_fits_63_characters() {
        assert_eq!(pod_hostname(&pod("ns", "p", Some("h-0"), None)), "h-0");
        assert_eq!(pod_hostname(&pod("ns", "p", None, None)), "p");
        let long = format!("{}-x", "a".repeat(62));
        assert_eq!(pod_hostname(&pod("ns", &long, None, None)), "a".repeat(62));
    }

    #[test]
    fn hosts_file_maps_every_gang_member_of_the_namespace() {
        let pods = [
            pod("ns", "job-1", Some("job-1"), Some("svc")),
            pod("ns", "job-0", Some("job-0"), Some("svc")),
            pod("ns", "lonely", None, None),
            pod("other", "job-0", Some("job-0"), Some("svc")),
        ];
        let peers = namespace_entries("ns", &pods);
        assert_eq!(peers.len(), 2);
        let text = hosts_file(pod_ip("ns", "job-0"), "job-0", &peers);
        let ip0 = pod_ip("ns", "job-0");
        let ip1 = pod_ip("ns", "job-1");
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(
            text.contains(&format!(
                "{ip0}\tjob-0.svc.ns.svc.cluster.local job-0.svc.ns.svc job-0.svc job-0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{ip1}\tjob-1.svc.ns.svc.cluster.local job-1.svc.ns.svc job-1.svc job-1\n"
            )),
            "{text}"
        );
        assert_eq!(
            text.matches(&ip0.to_string()).count(),
            1,
            "own name listed once: {text}"
        );
        // A pod without a subdomain still resolves its own hostname.
        let own = pod_ip("ns", "lonely");
        assert!(hosts_file(own, "lonely", &peers).contains(&format!("{own}\tlonely\n")));
    }
}
