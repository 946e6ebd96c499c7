//! The committed CRD must be exactly what the Rust types generate, and small enough for
//! `kubectl apply` (its last-applied annotation is capped at 256 KiB).

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = include_str!("../../crds/rlhf.dev_rlhfjobs.yaml");
    let generated = rlhf_operator::crd::crd_yaml();
    assert!(
        committed == generated,
        "crds/rlhf.dev_rlhfjobs.yaml is stale: run `make crd` (or `rlhf-operator crd > crds/rlhf.dev_rlhfjobs.yaml`)"
    );
}

#[test]
fn crd_fits_kubectl_apply_annotation() {
    let json = serde_json::to_string(&rlhf_operator::crd::crd()).unwrap();
    // Keep headroom under the 262144-byte limit for later fields.
    assert!(json.len() < 200 * 1024, "CRD JSON is {} bytes", json.len());
}

#[test]
fn crd_has_the_fixed_names() {
    let crd = rlhf_operator::crd::crd();
    assert_eq!(crd.spec.group, "rlhf.dev");
    assert_eq!(crd.spec.names.kind, "RLHFJob");
    assert_eq!(crd.spec.names.plural, "rlhfjobs");
    assert_eq!(crd.spec.names.short_names, Some(vec!["rlhf".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Phase", "Stage", "Step", "Reward", "Age"]);
}
