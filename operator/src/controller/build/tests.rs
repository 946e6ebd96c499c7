use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rlhf_spec::TrainerConfig;
use serde_json::{Value, json};

use super::*;
use crate::controller::fixtures::{TEST_UID, validated};

/// sft + rm -> ppo, every stage a gang of 3 pods with 4 GPUs each, on a shared ReadWriteMany volume.
fn spec() -> Value {
    let data = json!({"synthetic": {"task": "arithmetic"}});
    let training = json!({"maxLength": 64, "batchSize": 96});
    json!({
        "image": "registry.local/rlhf-trainer:test",
        "model": {"family": "gpt2", "init": "random",
                  "architecture": {"vocabSize": 50257, "hiddenSize": 32, "numLayers": 1, "numHeads": 2, "maxPositions": 96}},
        "parallelism": {"nodes": 3, "gpusPerNode": 4},
        "storage": {"accessModes": ["ReadWriteMany"], "size": "50Gi", "storageClassName": "fast"},
        "env": [{"name": "HF_HOME", "value": "/cache"}],
        "volumes": [{"name": "datasets", "emptyDir": {}}],
        "volumeMounts": [{"name": "datasets", "mountPath": "/datasets"}],
        "stages": [
            {"name": "sft", "kind": "sft", "dataset": data, "training": training},
            {"name": "rm", "kind": "rm", "dataset": data, "training": training},
            {"name": "ppo", "kind": "ppo", "dependsOn": ["sft", "rm"], "dataset": data, "training": training,
             "models": {"init": {"stage": "sft"}, "rewardModel": {"stage": "rm"}}, "rl": {"generation": {"maxNewTokens": 8}}}
        ]
    })
}

fn job() -> ValidatedJob {
    validated(spec())
}

fn sft_pods() -> Vec<Pod> {
    gang(&job(), "sft", 0).expect("sft is a stage").pods
}

fn pod_spec(pod: &Pod) -> &PodSpec {
    pod.spec.as_ref().expect("pod has a spec")
}

fn container(pod: &Pod) -> &Container {
    let containers = &pod_spec(pod).containers;
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn owner_reference() -> OwnerReference {
    OwnerReference {
        api_version: "rlhf.dev/v1alpha1".into(),
        kind: "RLHFJob".into(),
        name: "chat".into(),
        uid: TEST_UID.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn stage_config(job: &ValidatedJob, stage: &str) -> TrainerConfig {
    let cm = config_map(job, stage).expect("stage has a config map");
    let json = &cm.data.as_ref().expect("config map has data")[crate::names::CONFIG_FILE];
    serde_json::from_str(json).expect("trainer.json parses as a TrainerConfig")
}

#[test]
fn gang_is_one_labelled_owned_pod_per_node() {
    let pods = sft_pods();
    let names: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["chat-sft-0", "chat-sft-1", "chat-sft-2"]);
    for (rank, pod) in pods.iter().enumerate() {
        let rank = rank.to_string();
        let expected = strings(&[
            ("app.kubernetes.io/managed-by", "rlhf-operator"),
            ("rlhf.dev/gang-generation", "0"),
            ("rlhf.dev/job", "chat"),
            ("rlhf.dev/native-gang", "true"),
            ("rlhf.dev/node-rank", &rank),
            ("rlhf.dev/stage", "sft"),
        ]);
        assert_eq!(pod.metadata.labels.as_ref(), Some(&expected));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(pod.metadata.owner_references, Some(vec![owner_reference()]));
    }
    let next = gang(&job(), "sft", 2).unwrap();
    assert_eq!(
        next.pods[1].metadata.labels.as_ref().unwrap()["rlhf.dev/gang-generation"],
        "2"
    );
    assert!(gang(&job(), "nope", 0).is_none());
}

#[test]
fn pods_find_each_other_through_the_headless_service() {
    for pod in sft_pods() {
        let spec = pod_spec(&pod);
        assert_eq!(spec.hostname, pod.metadata.name);
        assert_eq!(spec.subdomain.as_deref(), Some("chat-sft"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = container(&pod);
        assert_eq!(c.name, "trainer");
        assert_eq!(c.image.as_deref(), Some("registry.local/rlhf-trainer:test"));
        assert_eq!(
            c.command,
            Some(vec!["rlhf-trainer".to_string(), "run".to_string()])
        );
    }
}

#[test]
fn env_has_the_torchrun_variables_then_the_users() {
    let pods = sft_pods();
    for (rank, pod) in pods.iter().enumerate() {
        let env: Vec<(String, String)> = container(pod)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let rank = rank.to_string();
        let expected = [
            ("MASTER_ADDR", "chat-sft-0.chat-sft.team-a.svc"),
            ("MASTER_PORT", "29500"),
            ("NNODES", "3"),
            ("NODE_RANK", &rank),
            ("LOCAL_WORLD_SIZE", "4"),
            ("WORLD_SIZE", "12"),
            ("RLHF_CONFIG", "/etc/rlhf/trainer.json"),
            ("RLHF_JOB", "chat"),
            ("RLHF_STAGE", "sft"),
            ("RLHF_NAMESPACE", "team-a"),
            ("RLHF_METRICS_PORT", "9400"),
            ("HF_HOME", "/cache"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(env, expected);
    }
}

#[test]
fn container_gets_its_gpus_ports_and_volumes() {
    let pod = &sft_pods()[0];
    let c = container(pod);
    let gpus = BTreeMap::from([("nvidia.com/gpu".to_string(), Quantity("4".into()))]);
    let resources = c.resources.as_ref().unwrap();
    assert_eq!(
        (resources.limits.as_ref(), resources.requests.as_ref()),
        (Some(&gpus), Some(&gpus))
    );
    let ports: Vec<(String, i32)> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("metrics-0".into(), 9400),
            ("metrics-1".into(), 9401),
            ("metrics-2".into(), 9402),
            ("metrics-3".into(), 9403)
        ]
    );

    let volumes = pod_spec(pod).volumes.as_ref().unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["rlhf-storage", "rlhf-config", "datasets"]);
    assert_eq!(
        volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "chat-storage"
    );
    assert_eq!(
        volumes[1].config_map.as_ref().unwrap().name,
        "chat-sft-config"
    );
    let mounts: Vec<(&str, &str, Option<bool>)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("rlhf-storage", "/rlhf", None),
            ("rlhf-config", "/etc/rlhf", Some(true)),
            ("datasets", "/datasets", None)
        ]
    );
}

#[test]
fn spec_hash_is_shared_by_the_gang_and_follows_the_spec() {
    let g = gang(&job(), "sft", 0).unwrap();
    assert_eq!(g.spec_hash.len(), 16);
    assert!(
        g.spec_hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{}",
        g.spec_hash
    );
    for pod in &g.pods {
        let expected = strings(&[("rlhf.dev/spec-hash", &g.spec_hash)]);
        assert_eq!(pod.metadata.annotations.as_ref(), Some(&expected));
    }
    // A restart (new generation) is the same spec; a new learning rate is not.
    assert_eq!(gang(&job(), "sft", 1).unwrap().spec_hash, g.spec_hash);
    let mut changed = spec();
    changed["stages"][0]["training"]["learningRate"] = json!(3e-5);
    let changed = validated(changed);
    assert_ne!(gang(&changed, "sft", 0).unwrap().spec_hash, g.spec_hash);
    assert_eq!(
        gang(&changed, "rm", 0).unwrap().spec_hash,
        gang(&job(), "rm", 0).unwrap().spec_hash
    );
}

#[test]
fn headless_service_selects_the_stage() {
    let svc = headless_service(&job(), "sft");
    let labels = strings(&[
        ("app.kubernetes.io/managed-by", "rlhf-operator"),
        ("rlhf.dev/job", "chat"),
        ("rlhf.dev/stage", "sft"),
    ]);
    assert_eq!(svc.metadata.name.as_deref(), Some("chat-sft"));
    assert_eq!(svc.metadata.labels.as_ref(), Some(&labels));
    assert_eq!(svc.metadata.owner_references, Some(vec![owner_reference()]));
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector, Some(labels));
    let ports: Vec<(Option<String>, i32)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    assert_eq!(ports, [(Some("rendezvous".to_string()), 29500)]);
}

#[test]
fn config_map_holds_the_trainer_config() {
    let job = job();
    let cm = config_map(&job, "ppo").unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("chat-ppo-config"));
    assert_eq!(cm.metadata.owner_references, Some(vec![owner_reference()]));

    let ppo = stage_config(&job, "ppo");
    assert_eq!(
        (ppo.job.as_str(), ppo.namespace.as_str(), ppo.metrics_port),
        ("chat", "team-a", 9400)
    );
    assert_eq!(ppo.output_dir, "/rlhf/team-a/chat/ppo");
    // Not the whole stage: serde_json (without its float_roundtrip feature) reads the resolved
    // critic learning rate 10 x 1e-6 = 9.999999999999999e-6 back as 1e-5.
    let resolved = job.pipeline.stage("ppo").unwrap();
    assert_eq!(
        (&ppo.stage.name, &ppo.stage.depends_on, &ppo.stage.models),
        (&resolved.name, &resolved.depends_on, &resolved.models)
    );
    assert_eq!(
        (&ppo.stage.training, &ppo.stage.parallelism),
        (&resolved.training, &resolved.parallelism)
    );
    assert_eq!(ppo.model, job.pipeline.model);
    // init/reference come from sft, rewardModel/critic from rm.
    assert_eq!(
        ppo.stage_outputs,
        strings(&[
            ("rm", "/rlhf/team-a/chat/rm"),
            ("sft", "/rlhf/team-a/chat/sft")
        ])
    );

    let sft = stage_config(&job, "sft");
    assert_eq!(sft.output_dir, "/rlhf/team-a/chat/sft");
    assert_eq!(sft.stage_outputs, BTreeMap::new());
    assert!(config_map(&job, "nope").is_none());
}

#[test]
fn storage_claim_only_when_the_operator_owns_it() {
    let pvc = storage_claim(&job()).expect("owned claim");
    assert_eq!(pvc.metadata.name.as_deref(), Some("chat-storage"));
    assert_eq!(
        pvc.metadata.labels,
        Some(strings(&[
            ("app.kubernetes.io/managed-by", "rlhf-operator"),
            ("rlhf.dev/job", "chat")
        ]))
    );
    assert_eq!(pvc.metadata.owner_references, Some(vec![owner_reference()]));
    let claim_spec = pvc.spec.unwrap();
    assert_eq!(
        claim_spec.access_modes,
        Some(vec!["ReadWriteMany".to_string()])
    );
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    let requests = claim_spec.resources.unwrap().requests.unwrap();
    assert_eq!(
        requests,
        BTreeMap::from([("storage".to_string(), Quantity("50Gi".into()))])
    );

    let mut existing = spec();
    existing["storage"] = json!({"claimName": "team-a-shared"});
    let existing = validated(existing);
    assert_eq!(storage_claim(&existing), None);
    let pod = &gang(&existing, "rm", 0).unwrap().pods[2];
    let claim = &pod_spec(pod).volumes.as_ref().unwrap()[0].persistent_volume_claim;
    assert_eq!(claim.as_ref().unwrap().claim_name, "team-a-shared");
}

#[test]
fn building_twice_gives_equal_objects() {
    let (a, b) = (job(), job());
    for stage in ["sft", "rm", "ppo"] {
        assert_eq!(gang(&a, stage, 1), gang(&b, stage, 1));
        assert_eq!(headless_service(&a, stage), headless_service(&b, stage));
        assert_eq!(config_map(&a, stage), config_map(&b, stage));
    }
    assert_eq!(storage_claim(&a), storage_claim(&b));
}

/// The test job handed to a batch scheduler: `scheduling` as given, plus CPU/memory requests.
fn batch_job(scheduling: Value) -> ValidatedJob {
    let mut spec = spec();
    spec["scheduling"] = scheduling;
    spec["priorityClassName"] = json!("research-high");
    spec["resources"] =
        json!({"requests": {"cpu": "1500m", "memory": "16Gi"}, "limits": {"memory": "16Gi"}});
    validated(spec)
}

fn assert_pod_group_meta(group: &kube::api::DynamicObject, api_version: &str) {
    let types = group
        .types
        .as_ref()
        .expect("a PodGroup has apiVersion and kind");
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        (api_version, "PodGroup")
    );
    assert_eq!(group.metadata.name.as_deref(), Some("chat-sft"));
    assert_eq!(group.metadata.namespace.as_deref(), Some("team-a"));
    let labels = strings(&[
        ("app.kubernetes.io/managed-by", "rlhf-operator"),
        ("rlhf.dev/job", "chat"),
        ("rlhf.dev/stage", "sft"),
    ]);
    assert_eq!(group.metadata.labels.as_ref(), Some(&labels));
    assert_eq!(
        group.metadata.owner_references,
        Some(vec![owner_reference()])
    );
}

#[test]
fn volcano_pod_group_asks_for_the_whole_gang_in_its_queue() {
    let job = batch_job(json!({"gang": "volcano", "queue": "research"}));
    let group = pod_group(&job, "sft").expect("volcano mode has a PodGroup");
    assert_pod_group_meta(&group, "scheduling.volcano.sh/v1beta1");
    // 3 pods, each requesting 4 GPUs, 1500m CPU and 16Gi.
    let expected = json!({"spec": {
        "minMember": 3,
        "minResources": {"cpu": "4500m", "memory": "48Gi", "nvidia.com/gpu": "12"},
        "queue": "research",
        "priorityClassName": "research-high",
    }});
    assert_eq!(group.data, expected);
    assert!(pod_group(&job, "nope").is_none());

    for pod in gang(&job, "sft", 0).unwrap().pods {
        assert_eq!(pod_spec(&pod).scheduler_name.as_deref(), Some("volcano"));
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations
                .get("scheduling.k8s.io/group-name")
                .map(String::as_str),
            Some("chat-sft")
        );
        assert!(annotations.contains_key("rlhf.dev/spec-hash"));
        assert!(
            !pod.metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key("scheduling.x-k8s.io/pod-group")
        );
    }
}

#[test]
fn coscheduling_pod_group_carries_the_gang_timeout() {
    let job = batch_job(json!({"gang": "coscheduling", "timeoutSeconds": 120}));
    let group = pod_group(&job, "sft").expect("coscheduling mode has a PodGroup");
    assert_pod_group_meta(&group, "scheduling.x-k8s.io/v1alpha1");
    let expected = json!({"spec": {
        "minMember": 3,
        "minResources": {"cpu": "4500m", "memory": "48Gi", "nvidia.com/gpu": "12"},
        "scheduleTimeoutSeconds": 120,
    }});
    assert_eq!(group.data, expected);

    for pod in gang(&job, "sft", 0).unwrap().pods {
        assert_eq!(
            pod_spec(&pod).scheduler_name.as_deref(),
            Some("scheduler-plugins-scheduler")
        );
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()["scheduling.x-k8s.io/pod-group"],
            "chat-sft"
        );
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["rlhf.dev/spec-hash"]
        );
    }
}

#[test]
fn native_and_unscheduled_gangs_have_no_pod_group_and_the_default_scheduler() {
    for scheduling in [
        json!({}),
        json!({"gang": "native"}),
        json!({"gang": "none"}),
    ] {
        let mut spec = spec();
        spec["scheduling"] = scheduling.clone();
        let job = validated(spec);
        assert!(pod_group(&job, "sft").is_none(), "{scheduling}");
        for pod in gang(&job, "sft", 0).unwrap().pods {
            assert_eq!(pod_spec(&pod).scheduler_name, None, "{scheduling}");
            assert_eq!(
                pod.metadata.annotations.as_ref().unwrap().len(),
                1,
                "{scheduling}"
            );
        }
    }
}

#[test]
fn batch_schedulers_map_to_their_podgroup_apis() {
    use crate::crd::GangMode;
    assert_eq!(batch_scheduler(GangMode::Volcano), Some(&VOLCANO));
    assert_eq!(batch_scheduler(GangMode::Coscheduling), Some(&COSCHEDULING));
    assert_eq!(
        (
            batch_scheduler(GangMode::Native),
            batch_scheduler(GangMode::None)
        ),
        (None, None)
    );
    let ar = VOLCANO.api_resource();
    assert_eq!(
        (
            ar.group.as_str(),
            ar.version.as_str(),
            ar.kind.as_str(),
            ar.plural.as_str()
        ),
        ("scheduling.volcano.sh", "v1beta1", "PodGroup", "podgroups")
    );
    assert_eq!(ar.api_version, "scheduling.volcano.sh/v1beta1");
    assert_eq!(VOLCANO.crd_name(), "podgroups.scheduling.volcano.sh");
    assert_eq!(COSCHEDULING.crd_name(), "podgroups.scheduling.x-k8s.io");
    assert_eq!(
        COSCHEDULING.membership,
        Membership::Label("scheduling.x-k8s.io/pod-group")
    );
}

#[test]
fn a_read_write_once_volume_keeps_the_jobs_pods_on_one_node() {
    // One-node stages on the default (ReadWriteOnce) storage, with an affinity of the user's.
    let mut v = spec();
    v.as_object_mut().unwrap().remove("storage");
    v["parallelism"] = json!({"nodes": 1, "gpusPerNode": 2});
    let zone = json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}});
    v["affinity"] = json!({"nodeAffinity": zone});
    let pod = &gang(&validated(v), "rm", 0).unwrap().pods[0];
    let affinity =
        serde_json::to_value(pod_spec(pod).affinity.as_ref().expect("an affinity")).unwrap();
    assert_eq!(affinity["nodeAffinity"], zone, "the user's affinity stays");
    assert_eq!(
        affinity["podAffinity"],
        json!({"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"rlhf.dev/job": "chat"}}, "topologyKey": "kubernetes.io/hostname"}]})
    );
    assert_eq!(colocated_job(pod), Some("team-a/chat".to_string()));

    // A ReadWriteMany volume lets the pods spread: no pod affinity, nothing colocated.
    let shared = &sft_pods()[0];
    assert!(pod_spec(shared).affinity.is_none());
    assert_eq!(colocated_job(shared), None);
}
