use k8s_openapi::api::core::v1::ResourceRequirements;
use serde_json::{Value, json};

use super::*;
use crate::controller::fixtures::{TEST_NAMESPACE, TEST_UID, job_named, validated};

/// A valid sft + rm -> ppo job, one node per stage, 2 GPUs per pod; the ppo stage brings its own resources.
fn spec() -> Value {
    let synthetic = json!({"synthetic": {"task": "copy"}});
    let training = json!({"maxLength": 64});
    json!({
        "image": "registry.local/rlhf-trainer:test",
        "model": {"family": "gpt2", "init": "random",
                  "architecture": {"vocabSize": 50257, "hiddenSize": 64, "numLayers": 2, "numHeads": 4, "maxPositions": 128}},
        "parallelism": {"gpusPerNode": 2},
        "resources": {"limits": {"cpu": "4", "memory": "16Gi"}},
        "stages": [
            {"name": "sft", "kind": "sft", "dataset": synthetic, "training": training},
            {"name": "rm", "kind": "rm", "dataset": synthetic, "training": training},
            {"name": "ppo", "kind": "ppo", "dependsOn": ["sft", "rm"], "dataset": synthetic, "training": training,
             "models": {"init": {"stage": "sft"}, "rewardModel": {"stage": "rm"}},
             "rl": {"generation": {"maxNewTokens": 16}},
             "resources": {"requests": {"memory": "32Gi"}}}
        ]
    })
}

/// The errors as `field: message`, in the order validate reports them.
fn errors_named(name: &str, spec: Value) -> Vec<String> {
    validate(&job_named(name, spec))
        .expect_err("job should be rejected")
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn errors(spec: Value) -> Vec<String> {
    errors_named("chat", spec)
}

/// `spec()` with `value` set at the JSON pointer `at` (parents created as needed).
fn spec_with(at: &str, value: Value) -> Value {
    let mut v = spec();
    let parts: Vec<String> = at
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/"))
        .collect();
    let (key, parents) = parts.split_last().expect("pointer names a field");
    let mut node = &mut v;
    for part in parents {
        node = match part.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => &mut node[part.as_str()],
        };
    }
    node[key.as_str()] = value;
    v
}

fn resources(v: Value) -> ResourceRequirements {
    serde_json::from_value(v).expect("test resources deserialize")
}

#[test]
fn valid_job_gets_every_default() {
    let job = validated(spec());
    assert_eq!(
        (job.name.as_str(), job.namespace.as_str(), job.uid.as_str()),
        ("chat", TEST_NAMESPACE, TEST_UID)
    );
    assert_eq!(
        job.claim,
        Claim::Owned {
            name: "chat-storage".into(),
            size: Quantity("10Gi".into()),
            storage_class: None,
            access_modes: vec![AccessMode::ReadWriteOnce],
        }
    );
    assert_eq!(job.mount_path, "/rlhf");
    assert_eq!(job.metrics_port, 9400);
    assert_eq!(
        job.run_policy,
        RunPolicyPlan {
            backoff_limit: 3,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            suspend: false,
            clean_pod_policy: CleanPodPolicy::None,
            progress_deadline_seconds: None,
        }
    );
    assert_eq!(
        job.scheduling,
        SchedulingPlan {
            gang: GangMode::Native,
            queue: None,
            timeout_seconds: 600
        }
    );
    assert_eq!(job.pod.pull_policy, "IfNotPresent");
    assert_eq!(job.pod.image, "registry.local/rlhf-trainer:test");
    let names: Vec<&str> = job
        .stages
        .iter()
        .map(|s| s.resolved.name.as_str())
        .collect();
    assert_eq!(names, ["sft", "rm", "ppo"]);
}

#[test]
fn gpus_per_node_sets_limits_and_requests() {
    let job = validated(spec());
    let inherited = resources(json!({
        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
        "requests": {"nvidia.com/gpu": "2"},
    }));
    assert_eq!(job.stage("sft").unwrap().resources, inherited);
    assert_eq!(job.stage("rm").unwrap().resources, inherited);
    // The stage's resources replace the job's as a whole (no cpu/memory limits inherited).
    let overridden = resources(json!({
        "limits": {"nvidia.com/gpu": "2"},
        "requests": {"memory": "32Gi", "nvidia.com/gpu": "2"},
    }));
    assert_eq!(job.stage("ppo").unwrap().resources, overridden);
}

#[test]
fn a_matching_gpu_count_is_accepted() {
    let job = validated(spec_with(
        "/resources/requests",
        json!({"nvidia.com/gpu": "2"}),
    ));
    assert_eq!(
        job.stage("sft")
            .unwrap()
            .resources
            .requests
            .as_ref()
            .unwrap()[GPU_RESOURCE],
        Quantity("2".into())
    );
}

#[test]
fn rejects_a_gpu_count_that_disagrees_with_gpus_per_node() {
    let errs = errors(spec_with("/resources/limits/nvidia.com~1gpu", json!("8")));
    // Said once, although two stages (sft and rm) inherit spec.resources.
    let msg = "spec.resources.limits[nvidia.com/gpu]: 8 disagrees with gpusPerNode 2; leave it out, the operator sets it";
    assert_eq!(errs, [msg]);

    let errs = errors(spec_with(
        "/stages/2/resources/requests/nvidia.com~1gpu",
        json!("1"),
    ));
    assert_eq!(
        errs,
        [
            "spec.stages[2].resources.requests[nvidia.com/gpu]: 1 disagrees with gpusPerNode 2; leave it out, the operator sets it"
        ]
    );
}

#[test]
fn rejects_reserved_env_vars() {
    let errs = errors(spec_with(
        "/env",
        json!([{"name": "HF_HOME", "value": "/cache"}, {"name": "MASTER_ADDR", "value": "x"}]),
    ));
    assert_eq!(
        errs,
        ["spec.env[1].name: MASTER_ADDR is set by the operator"]
    );
}

#[test]
fn rejects_volumes_and_mounts_that_clash_with_the_operator() {
    let mut v = spec_with(
        "/volumes",
        json!([{"name": "data", "emptyDir": {}}, {"name": "rlhf-config", "emptyDir": {}}]),
    );
    v["volumeMounts"] = json!([
        {"name": "data", "mountPath": "/data"},
        {"name": "models", "mountPath": "/models"},
        {"name": "data", "mountPath": "/rlhf/"},
        {"name": "data", "mountPath": "/etc/rlhf"},
    ]);
    assert_eq!(
        errors(v),
        [
            "spec.volumes[1].name: \"rlhf-config\" is reserved by the operator",
            "spec.volumeMounts[1].name: no volume named \"models\" in spec.volumes",
            "spec.volumeMounts[2].mountPath: /rlhf is used by the operator",
            "spec.volumeMounts[3].mountPath: /etc/rlhf is used by the operator",
        ]
    );
}

#[test]
fn an_existing_claim_excludes_size() {
    let errs = errors(spec_with(
        "/storage",
        json!({"claimName": "shared", "size": "1Ti"}),
    ));
    assert_eq!(
        errs,
        [
            "spec.storage.claimName: an existing claim cannot be combined with size, storageClassName or accessModes"
        ]
    );

    let job = validated(spec_with(
        "/storage",
        json!({"claimName": "shared", "mountPath": "/out"}),
    ));
    assert_eq!(
        (job.claim, job.mount_path.as_str()),
        (Claim::Existing("shared".into()), "/out")
    );
}

#[test]
fn a_queue_needs_volcano() {
    let errs = errors(spec_with("/scheduling", json!({"queue": "research"})));
    assert_eq!(
        errs,
        ["spec.scheduling.queue: a queue only applies to gang: volcano"]
    );

    let job = validated(spec_with(
        "/scheduling",
        json!({"gang": "volcano", "queue": "research"}),
    ));
    assert_eq!(
        job.scheduling,
        SchedulingPlan {
            gang: GangMode::Volcano,
            queue: Some("research".into()),
            timeout_seconds: 600
        }
    );
}

#[test]
fn multi_node_stages_cannot_share_a_read_write_once_volume() {
    let errs = errors(spec_with("/stages/1/parallelism", json!({"nodes": 2})));
    assert_eq!(
        errs,
        [
            "spec.stages[1].parallelism.nodes: 2 pods on different nodes cannot share a ReadWriteOnce volume; \
          set spec.storage.accessModes [ReadWriteMany] or spec.storage.claimName"
        ]
    );

    let mut v = spec_with("/stages/1/parallelism", json!({"nodes": 2}));
    v["storage"] = json!({"accessModes": ["ReadWriteMany"], "size": "50Gi"});
    assert_eq!(
        validated(v).stage("rm").unwrap().resolved.parallelism.nodes,
        2
    );
}

#[test]
fn job_names_must_make_valid_pod_and_service_names() {
    // "<59 chars>-sft-0" is 65 characters; every stage name is at least 2 long.
    let long = format!("j{}", "x".repeat(58));
    let too_long = |stage: &str| {
        format!(
            "pod name \"{long}-{stage}-0\" would exceed 63 characters; shorten the job or stage name"
        )
    };
    assert_eq!(
        errors_named(&long, spec()),
        [
            format!("spec.stages[0].name: {}", too_long("sft")),
            format!("spec.stages[1].name: {}", too_long("rm")),
            format!("spec.stages[2].name: {}", too_long("ppo")),
        ]
    );
    // 56 + "-sft-0" = 62 characters: fine.
    assert!(validate(&job_named(&"j".repeat(56), spec())).is_ok());

    assert_eq!(
        errors_named("7chat", spec()),
        ["metadata.name: \"7chat\" must start with a lowercase letter (it prefixes Service names)"]
    );
    assert_eq!(
        errors_named("chat.v2", spec()),
        [
            "metadata.name: \"chat.v2\" must not contain '.' (pod hostnames and Service names are DNS labels)"
        ]
    );
}

#[test]
fn pipeline_errors_come_with_spec_paths_next_to_the_operators_own() {
    let mut v = spec_with("/stages/0/training/batchSize", json!(24));
    v["env"] = json!([{"name": "WORLD_SIZE", "value": "1"}]);
    assert_eq!(
        errors(v),
        [
            "spec.stages[0].training.batchSize: 24 is not a multiple of microBatchSize 8 x world size 2 (= 16)",
            "spec.env[0].name: WORLD_SIZE is set by the operator",
        ]
    );
}

#[test]
fn storage_mount_path_must_not_hide_the_config() {
    let errs = errors(spec_with("/storage/mountPath", json!("/etc/rlhf/")));
    assert_eq!(
        errs,
        [
            "spec.storage.mountPath: \"/etc/rlhf/\" is not usable: choose a folder other than / and /etc/rlhf"
        ]
    );
}

/// Every manifest in examples/ is a valid job (they are what users copy first).
#[test]
fn every_example_manifest_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let job: RLHFJob = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let job = job_named(
            job.metadata.name.as_deref().unwrap(),
            serde_json::to_value(&job.spec).unwrap(),
        );
        if let Err(errors) = validate(&job) {
            panic!("{}: {errors:?}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 4, "examples/ has its manifests");
}
