//! The Helm chart (charts/rlhf-operator), through Helm's own engine (scripts/helm.py): lint is
//! clean with the default and the all-on values; the rendered objects follow the `<part>.enabled`
//! switches; the operator's Deployment is locked down; RBAC is exactly what the operator's code
//! calls, with no wildcard; the chart's CRD is the generated one; the Grafana dashboard queries
//! only metrics that exist, in PromQL Prometheus 2.42 parses; and the default render is accepted
//! by the real API server, whose RBAC then grants the ServiceAccount what it needs and no more.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rlhf_test_support::TestCluster;
use rlhf_test_support::chart::{self, kind};
use serde_json::Value as Json;
use serde_yaml::Value;

const FULL_VALUES: &str = "ci/full-values.yaml";

fn full_values() -> PathBuf {
    chart::chart_dir().join(FULL_VALUES)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// A values file written for one test (under cargo's per-crate temporary folder).
fn values_file(name: &str, yaml: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chart-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("writing a values file");
    path
}

fn render_default() -> Vec<Value> {
    chart::render("rlhf-system", "rlhf", None).expect("rendering the default values")
}

fn render_full() -> Vec<Value> {
    chart::render("rlhf-system", "rlhf", Some(&full_values()))
        .expect("rendering ci/full-values.yaml")
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = of_kind(docs, k);
    assert_eq!(found.len(), 1, "exactly one {k}, got {}", found.len());
    found[0]
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in docs {
        *counts.entry(kind(d).to_string()).or_insert(0) += 1;
    }
    counts
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------- lint

#[test]
fn lint_is_clean_with_default_and_full_values() {
    let dir = chart::chart_dir();
    let dir = dir.to_string_lossy();
    let out = chart::helm(&["lint", &dir]).expect("helm lint (default values)");
    assert!(out.contains("0 error(s)/warning(s)"), "{out}");
    let full = full_values();
    let out = chart::helm(&["lint", &dir, "--values", &full.to_string_lossy()])
        .expect("helm lint (ci/full-values.yaml)");
    assert!(out.contains("0 error(s)/warning(s)"), "{out}");
    let out = chart::helm(&["lint", &dir, "--kube-version", "v1.20.2"])
        .expect("helm lint for Kubernetes 1.20");
    assert!(out.contains("0 error(s)/warning(s)"), "{out}");
}

#[test]
fn the_schema_rejects_unknown_and_malformed_values() {
    let dir = chart::chart_dir();
    let dir = dir.to_string_lossy();
    for (name, yaml, says) in [
        ("unknown", "replicaCount: 2\n", "replicaCount"),
        ("replicas", "replicas: 0\n", "/replicas"),
        (
            "pull-policy",
            "image:\n  pullPolicy: Sometimes\n",
            "/image/pullPolicy",
        ),
        (
            "namespace",
            "watchNamespaces: [Team_A]\n",
            "/watchNamespaces/0",
        ),
        (
            "flag",
            "serviceMonitor:\n  enabled: \"yes\"\n",
            "/serviceMonitor/enabled",
        ),
        (
            "quantity",
            "resources:\n  limits:\n    memory: lots\n",
            "/resources/limits/memory",
        ),
    ] {
        let file = values_file(name, yaml);
        let err = chart::helm(&["render", &dir, "--values", &file.to_string_lossy()])
            .expect_err(&format!("{name}: rendering should fail"));
        assert!(
            err.to_string().contains(says),
            "{name}: the error should point at {says}: {err:#}"
        );
    }
}

// ---------------------------------------------------------------- objects per switch

#[test]
fn objects_follow_the_enabled_switches() {
    let default = kinds(&render_default());
    let expected: BTreeMap<String, usize> = [
        ("Deployment", 1),
        ("ServiceAccount", 1),
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Role", 1), // the leader-election Lease
        ("RoleBinding", 1),
        ("Service", 1),
        ("ConfigMap", 1), // the dashboard
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(default, expected, "default values");

    let full = kinds(&render_full());
    for (k, n) in [
        ("ServiceMonitor", 1),
        ("PodMonitor", 1),
        ("Role", 3),
        ("RoleBinding", 3),
        ("ClusterRole", 1),
        ("ConfigMap", 1),
        ("Service", 1),
    ] {
        assert_eq!(
            full.get(k).copied(),
            Some(n),
            "ci/full-values.yaml: {k} in {full:?}"
        );
    }

    let off = values_file(
        "all-off",
        "serviceAccount: {enabled: false, name: existing}\nrbac: {enabled: false}\nservice: {enabled: false}\ndashboard: {enabled: false}\n",
    );
    let docs =
        chart::render("rlhf-system", "rlhf", Some(&off)).expect("rendering with every part off");
    assert_eq!(
        kinds(&docs),
        BTreeMap::from([("Deployment".to_string(), 1)]),
        "every optional part off"
    );
    assert_eq!(
        one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some("existing")
    );

    // The ServiceMonitor scrapes through the Service: asking for it without one is an error.
    let broken = values_file(
        "monitor-without-service",
        "service: {enabled: false}\nserviceMonitor: {enabled: true}\n",
    );
    let err = chart::render("rlhf-system", "rlhf", Some(&broken))
        .expect_err("a ServiceMonitor without its Service");
    assert!(
        err.to_string()
            .contains("serviceMonitor.enabled needs service.enabled"),
        "{err:#}"
    );
}

#[test]
fn the_operator_deployment_is_locked_down_and_configured() {
    for (what, docs) in [("default", render_default()), ("full", render_full())] {
        let deployment = one(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{what}"
        );
        let containers = pod["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{what}");
        let c = &containers[0];
        let sc = &c["securityContext"];
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(sc["runAsUser"].as_i64(), Some(65532), "{what}: runAsUser");
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{what}: capabilities.drop"
        );
        assert_eq!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{what}: seccompProfile"
        );
        assert!(
            sc["capabilities"]["add"].is_null() && sc["privileged"].is_null(),
            "{what}: nothing added back"
        );

        // The metrics port named `metrics`, with the health endpoints on it.
        let ports = c["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0]["name"].as_str(), Some("metrics"));
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{what}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{what}"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{what}"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{what}"
        );
        for field in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !c["resources"][field][resource].is_null(),
                    "{what}: resources.{field}.{resource}"
                );
            }
        }
        // POD_NAME and POD_NAMESPACE from the downward API.
        let env: BTreeMap<String, String> = c["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()?
                        .to_string(),
                ))
            })
            .collect();
        assert_eq!(
            env.get("POD_NAME").map(String::as_str),
            Some("metadata.name"),
            "{what}"
        );
        assert_eq!(
            env.get("POD_NAMESPACE").map(String::as_str),
            Some("metadata.namespace"),
            "{what}"
        );
    }

    let docs = render_default();
    let deployment = one(&docs, "Deployment");
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(
        c["image"].as_str(),
        Some("ghcr.io/rlhf-operator/operator:0.1.0"),
        "the tag defaults to appVersion"
    );
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(8080));
    assert_eq!(strings(&c["command"]), ["rlhf-operator"]);
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            "--metrics-addr",
            "0.0.0.0:8080",
            "--leader-election-namespace",
            "$(POD_NAMESPACE)"
        ]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    for absent in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "imagePullSecrets",
        "priorityClassName",
    ] {
        assert!(pod[absent].is_null(), "{absent} is only set when given");
    }

    let docs = render_full();
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    assert_eq!(
        c["image"].as_str(),
        Some("registry.example.com/rlhf/operator:0.1.0-test")
    );
    assert_eq!(c["imagePullPolicy"].as_str(), Some("Always"));
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(9090));
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            "--metrics-addr",
            "0.0.0.0:9090",
            "--namespace",
            "team-a",
            "--namespace",
            "team-b",
            "--leader-election-namespace",
            "rlhf-system"
        ]
    );
    assert_eq!(c["resources"]["limits"]["memory"].as_str(), Some("1Gi"));
    assert_eq!(
        pod["nodeSelector"]["kubernetes.io/os"].as_str(),
        Some("linux")
    );
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    assert!(pod["affinity"]["podAntiAffinity"].is_mapping());
    assert_eq!(pod["serviceAccountName"].as_str(), Some("rlhf-operator-sa"));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-cluster-critical")
    );
}

// ---------------------------------------------------------------- RBAC

/// (API group, resource) -> verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

const ALL_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// What the operator does in each namespace it watches (operator/src/controller/).
const NAMESPACED: &[(&str, &str, &[&str])] = &[
    (
        "rlhf.dev",
        "rlhfjobs",
        &["get", "list", "watch", "patch", "delete"],
    ),
    ("rlhf.dev", "rlhfjobs/status", &["get", "patch"]),
    ("", "pods", ALL_VERBS),
    ("", "services", ALL_VERBS),
    ("", "configmaps", ALL_VERBS),
    ("", "persistentvolumeclaims", &["get", "create", "patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "scheduling.volcano.sh",
        "podgroups",
        &["get", "create", "patch", "delete"],
    ),
    (
        "scheduling.x-k8s.io",
        "podgroups",
        &["get", "create", "patch", "delete"],
    ),
];

/// Cluster-scoped reads of gang admission and NotReady detection.
const CLUSTER: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["get", "list", "watch"]),
    ("", "pods", &["list"]),
    ("scheduling.k8s.io", "priorityclasses", &["list"]),
];

const LEADER_ELECTION: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];

fn table(parts: &[&[(&str, &str, &[&str])]]) -> Grants {
    let mut grants = Grants::new();
    for (group, resource, verbs) in parts.iter().copied().flatten() {
        grants
            .entry((group.to_string(), resource.to_string()))
            .or_default()
            .extend(verbs.iter().map(|v| v.to_string()));
    }
    grants
}

/// The grants of a Role or ClusterRole, checking each rule's shape on the way: no wildcard, no
/// resourceNames or nonResourceURLs, nothing empty.
fn grants(role: &Value) -> Grants {
    let name = role["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = Grants::new();
    for rule in role["rules"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{name} has rules"))
    {
        let (groups, resources, verbs) = (
            strings(&rule["apiGroups"]),
            strings(&rule["resources"]),
            strings(&rule["verbs"]),
        );
        assert!(
            !groups.is_empty() && !resources.is_empty() && !verbs.is_empty(),
            "{name}: incomplete rule {rule:?}"
        );
        assert!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "{name}: unexpected rule {rule:?}"
        );
        for s in groups.iter().chain(&resources).chain(&verbs) {
            assert!(!s.contains('*'), "{name}: wildcard in {rule:?}");
        }
        for g in &groups {
            for r in &resources {
                out.entry((g.clone(), r.clone()))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    out
}

/// Every binding points at a role of this render and at the operator's ServiceAccount.
fn check_bindings(docs: &[Value], account: &str, release_ns: &str) {
    for binding in of_kind(docs, "RoleBinding")
        .into_iter()
        .chain(of_kind(docs, "ClusterRoleBinding"))
    {
        let (role_kind, role_name) = (
            binding["roleRef"]["kind"].as_str().unwrap(),
            binding["roleRef"]["name"].as_str().unwrap(),
        );
        let same_ns = |d: &&Value| {
            kind(binding) == "ClusterRoleBinding"
                || d["metadata"]["namespace"] == binding["metadata"]["namespace"]
        };
        assert!(
            of_kind(docs, role_kind)
                .into_iter()
                .filter(same_ns)
                .any(|r| r["metadata"]["name"].as_str() == Some(role_name)),
            "{} {:?} refers to a missing {role_kind} {role_name}",
            kind(binding),
            binding["metadata"]["name"]
        );
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
        assert_eq!(subjects[0]["name"].as_str(), Some(account));
        assert_eq!(subjects[0]["namespace"].as_str(), Some(release_ns));
    }
}

#[test]
fn rbac_grants_exactly_what_the_operator_does() {
    // Cluster-wide (default): one ClusterRole with everything; the Lease Role in the release namespace.
    let docs = render_default();
    assert_eq!(
        grants(one(&docs, "ClusterRole")),
        table(&[NAMESPACED, CLUSTER]),
        "the default ClusterRole"
    );
    let lease_role = one(&docs, "Role");
    assert_eq!(
        lease_role["metadata"]["namespace"].as_str(),
        Some("rlhf-system")
    );
    assert_eq!(grants(lease_role), table(&[LEADER_ELECTION]));
    check_bindings(
        &docs,
        one(&docs, "ServiceAccount")["metadata"]["name"]
            .as_str()
            .unwrap(),
        "rlhf-system",
    );

    // watchNamespaces: a Role per namespace, a ClusterRole with only the cluster-scoped reads, the
    // Lease Role in leaderElection.namespace.
    let docs = render_full();
    assert_eq!(
        grants(one(&docs, "ClusterRole")),
        table(&[CLUSTER]),
        "the ClusterRole next to per-namespace Roles"
    );
    let mut by_namespace = BTreeMap::new();
    for role in of_kind(&docs, "Role") {
        by_namespace.insert(
            role["metadata"]["namespace"].as_str().unwrap().to_string(),
            grants(role),
        );
    }
    assert_eq!(
        by_namespace,
        BTreeMap::from([
            ("team-a".to_string(), table(&[NAMESPACED])),
            ("team-b".to_string(), table(&[NAMESPACED])),
            ("rlhf-system".to_string(), table(&[LEADER_ELECTION])),
        ])
    );
    check_bindings(&docs, "rlhf-operator-sa", "rlhf-system");
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let generated = std::fs::read(repo_root().join("crds/rlhf.dev_rlhfjobs.yaml"))
        .expect("crds/rlhf.dev_rlhfjobs.yaml");
    let copy = std::fs::read(chart::chart_dir().join("crds/rlhf.dev_rlhfjobs.yaml"))
        .expect("the chart's CRD");
    assert!(
        generated == copy,
        "charts/rlhf-operator/crds/rlhf.dev_rlhfjobs.yaml differs from crds/: run `make crd`"
    );
}

// ---------------------------------------------------------------- monitoring

#[test]
fn monitors_scrape_the_operator_and_every_trainer_rank() {
    let docs = render_full();
    let service = one(&docs, "Service");
    assert_eq!(
        service["spec"]["ports"][0]["name"].as_str(),
        Some("metrics")
    );
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(9090));
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("metrics")
    );

    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the metrics Service ({k:?})"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert_eq!(endpoint["honorLabels"].as_bool(), Some(true));

    let pods = one(&docs, "PodMonitor");
    assert_eq!(
        pods["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"].as_str(),
        Some("rlhf-operator")
    );
    assert_eq!(
        strings(&pods["spec"]["namespaceSelector"]["matchNames"]),
        ["team-a", "team-b"]
    );
    let endpoints = pods["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .expect("podMetricsEndpoints");
    let ports: Vec<&str> = endpoints
        .iter()
        .map(|e| e["port"].as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        (0..8).map(|r| format!("metrics-{r}")).collect::<Vec<_>>(),
        "one endpoint per local rank"
    );
    assert!(endpoints.iter().all(
        |e| e["honorLabels"].as_bool() == Some(true) && e["path"].as_str() == Some("/metrics")
    ));
    // The operator's own pods are managed by Helm, so the PodMonitor never scrapes them.
    let operator_labels = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        operator_labels["app.kubernetes.io/managed-by"].as_str(),
        Some("Helm")
    );

    // Default: all namespaces.
    let off = values_file("podmonitor-default", "podMonitor: {enabled: true}\n");
    let docs = chart::render("rlhf-system", "rlhf", Some(&off)).expect("render");
    assert_eq!(
        one(&docs, "PodMonitor")["spec"]["namespaceSelector"]["any"].as_bool(),
        Some(true)
    );
}

// ---------------------------------------------------------------- dashboard

/// The operator's metrics (operator/src/metrics.rs); the trainer's are chart::TRAINER_METRICS.
const OPERATOR_METRICS: &[&str] = &[
    "rlhf_operator_jobs",
    "rlhf_operator_gangs_queued",
    "rlhf_operator_admission_wait_seconds_bucket",
    "rlhf_operator_gang_restarts_total",
    "rlhf_operator_reconciles_total",
    "rlhf_operator_reconcile_errors_total",
    "rlhf_operator_reconcile_duration_seconds_bucket",
    "rlhf_operator_pods_created_total",
    "rlhf_operator_pods_deleted_total",
    "rlhf_operator_is_leader",
];

/// PromQL functions, aggregations and keywords the dashboard may use (anything else that looks
/// like a name is taken for a metric).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "irate",
    "delta",
    "histogram_quantile",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "last_over_time",
    "clamp_min",
    "clamp_max",
    "topk",
    "bottomk",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "vector",
    "scalar",
    "abs",
];

/// The metric names of a PromQL expression: its identifiers outside label matchers, strings and
/// range selectors, that are not functions or keywords, and not label lists of by/without/on.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let (mut i, mut depth_brace, mut depth_bracket, mut skip_label_list) = (0, 0, 0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '(' if skip_label_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_label_list = false;
            }
            c if (c.is_ascii_alphabetic() || c == '_' || c == ':')
                && depth_brace == 0
                && depth_bracket == 0 =>
            {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                skip_label_list = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                if !PROMQL_WORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
                continue;
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

fn dashboard() -> Json {
    let path = chart::chart_dir().join("dashboards/rlhf.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
        .expect("the dashboard is JSON")
}

/// (panel title, expr) of every target, rows' nested panels included.
fn panel_queries(panels: &Json, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default();
        if panel["type"] != "row" {
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            for t in targets {
                out.push((
                    title.to_string(),
                    t["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{title}: a target without expr"))
                        .to_string(),
                ));
            }
        }
        panel_queries(&panel["panels"], out);
    }
}

#[test]
fn the_dashboard_queries_only_known_metrics_through_its_variables() {
    let dashboard = dashboard();
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());

    // Template variables: namespace and rlhf_job from label_values, multi-select with All.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    for name in ["namespace", "rlhf_job"] {
        let v = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"));
        assert_eq!(v["type"], "query", "{name}");
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("its query");
        assert!(
            query.starts_with("label_values(") && query.contains(&format!(", {name})")),
            "{name}: {query}"
        );
        assert_eq!(v["includeAll"], true, "{name}");
    }

    let mut queries = Vec::new();
    panel_queries(&dashboard["panels"], &mut queries);
    let allowed: BTreeSet<&str> = chart::TRAINER_METRICS
        .iter()
        .chain(OPERATOR_METRICS)
        .copied()
        .collect();
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in &names {
            assert!(
                allowed.contains(name.as_str()),
                "{title}: {name} is not a metric the operator or trainer exports ({expr})"
            );
        }
        // Grafana's own variables ($__rate_interval, ...) would not survive a check against a
        // plain Prometheus; only the dashboard's two are used.
        let rest = expr.replace("$namespace", "").replace("$rlhf_job", "");
        assert!(
            !rest.contains('$'),
            "{title}: only $namespace and $rlhf_job may appear: {expr}"
        );
        // Per-job panels filter by both variables.
        if names
            .iter()
            .any(|n| n.starts_with("rlhf_trainer_") || n == "rlhf_operator_gang_restarts_total")
        {
            assert!(
                expr.contains("namespace=~\"$namespace\"")
                    && expr.contains("rlhf_job=~\"$rlhf_job\""),
                "{title}: not filtered: {expr}"
            );
        }
        used.extend(names);
    }
    let unused: Vec<&&str> = allowed.iter().filter(|m| !used.contains(**m)).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");

    // Panel ids are unique and every panel has a place on the grid.
    let ids: Vec<i64> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().expect("panel id"))
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "duplicate panel ids"
    );
    assert!(
        dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["gridPos"]["w"].as_i64().is_some_and(|w| w > 0 && w <= 24))
    );

    // Prometheus 2.42 parses every expression (promtool checks them as recording rules).
    let rules: Vec<Json> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr.replace("$namespace", ".*").replace("$rlhf_job", ".*")}))
        .collect();
    let file = values_file(
        "dashboard-rules",
        &serde_yaml::to_string(
            &serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}),
        )
        .unwrap(),
    );
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is installed (scripts/install-deps.sh installs Debian's prometheus)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_metric_name_scanner_skips_functions_labels_and_ranges() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, stage) (rate(foo_bucket{a=~"x|y", b="by"}[5m]))) / on (stage) group_left bar"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["foo_bucket".to_string(), "bar".to_string()])
    );
}

#[test]
fn the_dashboard_configmap_carries_the_dashboard() {
    let docs = render_default();
    let config_map = one(&docs, "ConfigMap");
    assert_eq!(
        config_map["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let text = config_map["data"]["rlhf.json"]
        .as_str()
        .expect("data.rlhf.json");
    let embedded: Json = serde_json::from_str(text).expect("the embedded dashboard is JSON");
    assert_eq!(embedded, dashboard());

    let docs = render_full();
    let config_map = one(&docs, "ConfigMap");
    assert_eq!(
        config_map["metadata"]["namespace"].as_str(),
        Some("monitoring")
    );
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"].as_str(),
        Some("RLHF")
    );
}

// ---------------------------------------------------------------- the real API server

/// `kubectl auth can-i` as the chart's ServiceAccount: a line says yes or no (warnings aside).
async fn can_i(cluster: &TestCluster, account: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--as", account]);
    let (_, out) = cluster.kubectl(&all, "").await;
    let answer = out
        .lines()
        .map(str::trim)
        .find(|l| *l == "yes" || *l == "no" || l.starts_with("no - "));
    answer.unwrap_or_else(|| panic!("kubectl auth can-i {args:?}: {out}")) == "yes"
}

#[tokio::test]
async fn the_default_render_is_accepted_by_the_api_server_and_its_rbac_works() {
    let cluster = TestCluster::connect().await;
    // `kubectl auth can-i` resolves podgroups through discovery: their CRDs must be served.
    cluster
        .install_pod_group_crds()
        .await
        .expect("installing the PodGroup CRDs");
    let ns = cluster.namespace("chart").await;
    // Release named after the namespace, so the cluster-scoped objects are this test's own.
    let docs = chart::render(&ns, &ns, None).expect("rendering the chart");
    let absent_crds = ["ServiceMonitor", "PodMonitor"];
    let stream = |keep: &dyn Fn(&Value) -> bool| -> String {
        docs.iter()
            .filter(|d| keep(d) && !absent_crds.contains(&kind(d)))
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect()
    };
    // The Deployment only on a dry run: with a node agent of another test around, its pod could
    // really start.
    let (ok, out) = cluster
        .kubectl(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-n",
                &ns,
                "-f",
                "-",
            ],
            &stream(&|d| kind(d) == "Deployment"),
        )
        .await;
    assert!(ok, "the Deployment (server dry run): {out}");
    let (ok, out) = cluster
        .kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=chart-test",
                "-n",
                &ns,
                "-f",
                "-",
            ],
            &stream(&|d| kind(d) != "Deployment"),
        )
        .await;
    assert!(ok, "the chart's objects (server-side apply): {out}");

    let account = format!(
        "system:serviceaccount:{ns}:{}",
        one(&docs, "ServiceAccount")["metadata"]["name"]
            .as_str()
            .unwrap()
    );
    let n = ns.as_str();
    let granted: &[&[&str]] = &[
        &["watch", "rlhfjobs.rlhf.dev", "--all-namespaces"],
        &["delete", "rlhfjobs.rlhf.dev", "-n", n],
        &[
            "patch",
            "rlhfjobs.rlhf.dev",
            "--subresource=status",
            "-n",
            n,
        ],
        &["create", "pods", "-n", n],
        &["delete", "pods", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        &["patch", "services", "-n", n],
        &["delete", "configmaps", "-n", n],
        &["create", "persistentvolumeclaims", "-n", n],
        &["create", "events.events.k8s.io", "-n", n],
        &["watch", "nodes"],
        &["list", "priorityclasses.scheduling.k8s.io"],
        &["patch", "podgroups.scheduling.volcano.sh", "-n", n],
        &["create", "podgroups.scheduling.x-k8s.io", "-n", n],
        &["delete", "podgroups.scheduling.volcano.sh", "-n", n],
        &["update", "leases.coordination.k8s.io", "-n", n],
    ];
    let refused: &[&[&str]] = &[
        &["get", "secrets", "-n", n],
        &["create", "rlhfjobs.rlhf.dev", "-n", n],
        &["update", "pods", "-n", n],
        &["create", "pods", "--subresource=exec", "-n", n],
        &["delete", "persistentvolumeclaims", "-n", n],
        &["create", "events", "-n", n],
        &["patch", "nodes"],
        &["create", "priorityclasses.scheduling.k8s.io"],
        &["update", "podgroups.scheduling.volcano.sh", "-n", n],
        &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
    ];
    let mut wrong = Vec::new();
    for (args, expected) in granted
        .iter()
        .map(|a| (a, true))
        .chain(refused.iter().map(|a| (a, false)))
    {
        if can_i(&cluster, &account, args).await != expected {
            wrong.push(format!(
                "{} {args:?}",
                if expected { "refused" } else { "granted" }
            ));
        }
    }
    // Cluster-scoped objects of this release go (the namespace's go with it).
    let name = one(&docs, "ClusterRole")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = cluster
        .kubectl(
            &[
                "delete",
                "clusterrole,clusterrolebinding",
                &name,
                "--ignore-not-found",
            ],
            "",
        )
        .await;
    let _ = cluster
        .kubectl(&["delete", "namespace", &ns, "--wait=false"], "")
        .await;
    assert!(wrong.is_empty(), "RBAC as {account}:\n{}", wrong.join("\n"));
}
