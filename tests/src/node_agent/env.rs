//! (pure) A pod process's environment: the agent's own, overlaid by the container's `env`
//! (literal values and the downward API's fieldRef), overlaid by what the agent rewrites (ports).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

/// What the downward API can read: the pod plus the addresses the agent gave it.
pub struct FieldSource<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Ipv4Addr,
    pub host_ip: &'a str,
}

impl FieldSource<'_> {
    /// The value of a fieldRef path, None for paths this agent does not know.
    pub fn field(&self, path: &str) -> Option<String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let keyed = |prefix: &str, map: &BTreeMap<String, String>| -> Option<Option<String>> {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(map.get(key).cloned())
        };
        Some(match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.pod.namespace().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" | "status.podIPs" => self.pod_ip.to_string(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            _ => {
                let found = keyed("metadata.labels['", self.pod.labels())
                    .or_else(|| keyed("metadata.annotations['", self.pod.annotations()))?;
                found.unwrap_or_default()
            }
        })
    }
}

/// The container's own variables in order, or an error naming the first one it cannot resolve.
pub fn container_env(
    container: &Container,
    fields: &FieldSource,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => match &from.field_ref {
                Some(field) => fields.field(&field.field_path).ok_or_else(|| {
                    format!(
                        "env {}: fieldRef {} is not supported by rlhf-node-agent",
                        var.name, field.field_path
                    )
                })?,
                None => {
                    return Err(format!(
                        "env {}: only valueFrom.fieldRef is supported by rlhf-node-agent",
                        var.name
                    ));
                }
            },
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// Later layers win: `base` (the agent's environment), then `pod`, then `overrides`.
pub fn overlay(
    base: impl IntoIterator<Item = (String, String)>,
    pod: &[(String, String)],
    overrides: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = base.into_iter().collect();
    env.extend(pod.iter().cloned());
    env.extend(overrides.iter().cloned());
    env
}

/// The last value of `name` in an ordered variable list (as a shell would see it).
pub fn lookup<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "job-sft-0", "namespace": "team-a", "uid": "u-1", "labels": {"rank": "0"}},
            "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "trainer", "env": [
                {"name": "A", "value": "1"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
                {"name": "EMPTY"},
                {"name": "A", "value": "2"}
            ]}]}
        }))
        .unwrap()
    }

    #[test]
    fn resolves_values_and_field_refs_in_order() {
        let pod = pod();
        let fields = FieldSource {
            pod: &pod,
            pod_ip: Ipv4Addr::new(127, 3, 4, 5),
            host_ip: "127.0.0.1",
        };
        let vars = container_env(&pod.spec.as_ref().unwrap().containers[0], &fields).unwrap();
        let get = |k| lookup(&vars, k);
        assert_eq!(get("A"), Some("2"));
        assert_eq!(get("POD"), Some("job-sft-0"));
        assert_eq!(get("NS"), Some("team-a"));
        assert_eq!(get("IP"), Some("127.3.4.5"));
        assert_eq!(get("RANK"), Some("0"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(fields.field("spec.nodeName").as_deref(), Some("gpu-node-1"));
    }

    #[test]
    fn unsupported_sources_name_the_variable() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}
        }))
        .unwrap();
        let fields = FieldSource {
            pod: &pod,
            pod_ip: Ipv4Addr::LOCALHOST,
            host_ip: "127.0.0.1",
        };
        let err = container_env(&pod.spec.as_ref().unwrap().containers[0], &fields).unwrap_err();
        assert!(err.contains("TOKEN"), "{err}");
    }

    #[test]
    fn overlay_order_is_agent_then_pod_then_overrides() {
        let base = [
            ("PATH".to_string(), "/bin".to_string()),
            ("MASTER_PORT".into(), "1".into()),
        ];
        let pod = [
            ("MASTER_PORT".to_string(), "29500".to_string()),
            ("X".into(), "x".into()),
        ];
        let env = overlay(base, &pod, &[("MASTER_PORT".into(), "23456".into())]);
        assert_eq!(env["PATH"], "/bin");
        assert_eq!(env["X"], "x");
        assert_eq!(env["MASTER_PORT"], "23456");
    }
}
