use serde_json::json;

use super::*;
use crate::{BuiltinTokenizer, ResolvedDataset, ResolvedTokenizer, RewardSource, WeightsSource};

/// The reward-model sources of a resolved stage.
fn reward_models(s: &ResolvedStage) -> Vec<WeightsSource> {
    s.rl.iter()
        .flat_map(|rl| &rl.rewards)
        .filter_map(|r| match &r.source {
            RewardSource::Model(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// A valid sft + rm -> ppo pipeline on a tiny random gpt2.
fn pipeline() -> serde_json::Value {
    json!({
        "model": {"family": "gpt2", "init": "random",
                  "architecture": {"vocabSize": 50257, "hiddenSize": 64, "numLayers": 2, "numHeads": 4, "maxPositions": 128}},
        "parallelism": {"nodes": 2, "gpusPerNode": 2},
        "stages": [
            {"name": "sft", "kind": "sft", "dataset": {"synthetic": {"task": "copy"}}, "training": {"maxLength": 64}},
            {"name": "rm", "kind": "rm", "dataset": {"synthetic": {"task": "copy"}}, "training": {"maxLength": 64}},
            {"name": "ppo", "kind": "ppo", "dependsOn": ["sft", "rm"], "dataset": {"synthetic": {"task": "copy"}},
             "models": {"init": {"stage": "sft"}, "rewardModel": {"stage": "rm"}},
             "training": {"maxLength": 64}, "rl": {"generation": {"maxNewTokens": 16}},
             "parallelism": {"nodes": 1, "strategy": "zero2"}}
        ]
    })
}

fn resolve(v: serde_json::Value) -> Result<ResolvedPipeline, Vec<FieldError>> {
    let spec: PipelineSpec = serde_json::from_value(v).expect("test spec deserializes");
    resolve_pipeline(&spec, "spec")
}

fn errors_of(v: serde_json::Value) -> Vec<String> {
    resolve(v)
        .expect_err("spec should be rejected")
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn fills_defaults_and_resolves_sources() {
    let p = resolve(pipeline()).unwrap();
    let ppo = p.stage("ppo").unwrap();
    assert_eq!(ppo.models.init, WeightsSource::Stage("sft".into()));
    assert_eq!(reward_models(ppo), [WeightsSource::Stage("rm".into())]);
    // critic defaults to the reward model, reference to the actor's start.
    assert_eq!(ppo.models.critic, Some(WeightsSource::Stage("rm".into())));
    assert_eq!(
        ppo.models.reference,
        Some(WeightsSource::Stage("sft".into()))
    );
    assert_eq!(ppo.training.learning_rate, 1e-6);
    assert_eq!(ppo.training.adam_epsilon, 1e-8);
    assert!(!ppo.training.weight_decay_embeddings);
    assert!((ppo.ppo.as_ref().unwrap().critic_learning_rate - 1e-5).abs() < 1e-12);
    // stage override: nodes 1, gpusPerNode inherited 2 -> world 2; 32 / (8 x 2) = 2 accumulation steps.
    assert_eq!(ppo.parallelism.world_size(), 2);
    assert_eq!(ppo.training.gradient_accumulation, 2);
    assert_eq!(p.stage("sft").unwrap().training.gradient_accumulation, 1);
    assert_eq!(
        p.model.tokenizer,
        ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)
    );
    let pos = |n: &str| p.order.iter().position(|s| s == n).unwrap();
    assert!(pos("ppo") > pos("sft") && pos("ppo") > pos("rm"));
}

#[test]
fn rejects_cycles_and_unknown_dependencies() {
    let mut v = pipeline();
    v["stages"][0]["dependsOn"] = json!(["ppo"]);
    v["stages"][1]["dependsOn"] = json!(["nope"]);
    let errs = errors_of(v);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.stages: dependsOn forms a cycle")),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"spec.stages[1].dependsOn[0]: unknown stage \"nope\"".to_string()),
        "{errs:?}"
    );
}

#[test]
fn rejects_duplicate_names_and_self_dependency() {
    let mut v = pipeline();
    v["stages"][1]["name"] = json!("sft");
    v["stages"][0]["dependsOn"] = json!(["sft"]);
    let errs = errors_of(v);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.stages[1].name: duplicate stage name")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.stages[0].dependsOn[0]: a stage cannot depend on itself")),
        "{errs:?}"
    );
}

#[test]
fn ppo_needs_a_reward_model_from_an_rm_ancestor() {
    // No rm stage to default to.
    let mut v = pipeline();
    v["stages"][2]["models"] = json!({"init": {"stage": "sft"}});
    v["stages"][2]["dependsOn"] = json!(["sft"]);
    assert!(
        errors_of(v)
            .iter()
            .any(|e| e.starts_with("spec.stages[2].rewards: a ppo stage needs a reward"))
    );

    let mut v = pipeline();
    v["stages"][2]["models"]["rewardModel"] = json!({"stage": "sft"});
    assert!(
        errors_of(v)
            .iter()
            .any(|e| e.contains("is a sft stage, which cannot provide"))
    );

    let mut v = pipeline();
    v["stages"][2]["dependsOn"] = json!(["sft"]);
    assert!(errors_of(v).iter().any(|e| e.starts_with(
        "spec.stages[2].models.rewardModel.stage: stage \"rm\" must be in dependsOn"
    )));
}

#[test]
fn the_instructgpt_shape_needs_no_wiring() {
    let mut v = pipeline();
    v["stages"][2].as_object_mut().unwrap().remove("dependsOn");
    v["stages"][2].as_object_mut().unwrap().remove("models");
    let p = resolve(v).unwrap();
    let ppo = p.stage("ppo").unwrap();
    assert_eq!(ppo.depends_on, ["sft", "rm"]);
    assert_eq!(
        (ppo.models.init.clone(), reward_models(ppo)),
        (
            WeightsSource::Stage("sft".into()),
            vec![WeightsSource::Stage("rm".into())]
        )
    );
    assert_eq!(
        (ppo.models.critic.clone(), ppo.models.reference.clone()),
        (
            Some(WeightsSource::Stage("rm".into())),
            Some(WeightsSource::Stage("sft".into()))
        )
    );
    // sft and rm have no dependencies: they start together from the base model.
    assert!(
        p.stage("sft").unwrap().depends_on.is_empty()
            && p.stage("rm").unwrap().depends_on.is_empty()
    );
    assert_eq!(p.stage("rm").unwrap().models.init, WeightsSource::Base);

    // dpo after sft; with two sft stages nothing is guessed for init.
    let mut v = pipeline();
    v["stages"][2] = json!({"name": "dpo", "kind": "dpo", "dataset": {"path": "/data/prefs.jsonl"}, "training": {"maxLength": 64}});
    let p = resolve(v.clone()).unwrap();
    let dpo = p.stage("dpo").unwrap();
    assert_eq!(
        (dpo.depends_on.clone(), dpo.models.init.clone()),
        (vec!["sft".to_string()], WeightsSource::Stage("sft".into()))
    );
    v["stages"][1] = json!({"name": "sft2", "kind": "sft", "dataset": {"synthetic": {"task": "copy"}}, "training": {"maxLength": 64}});
    let dpo = resolve(v).unwrap().stage("dpo").unwrap().clone();
    assert_eq!(
        (dpo.depends_on.len(), dpo.models.init),
        (2, WeightsSource::Base)
    );
}

#[test]
fn rejects_roles_a_kind_does_not_have() {
    let mut v = pipeline();
    v["stages"][0]["models"] = json!({"rewardModel": {"path": "/models/rm"}});
    v["stages"][0]["ppo"] = json!({});
    let errs = errors_of(v);
    assert!(
        errs.contains(
            &"spec.stages[0].models.rewardModel: a sft stage has no rewardModel model".to_string()
        ),
        "{errs:?}"
    );
    assert!(
        errs.contains(
            &"spec.stages[0].ppo: ppo settings on a sft stage (they are ppo only)".to_string()
        ),
        "{errs:?}"
    );
}

#[test]
fn batch_must_divide_over_ranks() {
    let mut v = pipeline();
    v["stages"][0]["training"]["batchSize"] = json!(24);
    let errs = errors_of(v);
    assert_eq!(
        errs,
        vec![
            "spec.stages[0].training.batchSize: 24 is not a multiple of microBatchSize 8 x world size 4 (= 32)"
        ]
    );
}

#[test]
fn model_rules() {
    let mut v = pipeline();
    v["model"]["architecture"]["numHeads"] = json!(5);
    v["model"]["architecture"]["numKvHeads"] = json!(1);
    let errs = errors_of(v);
    assert!(
        errs.contains(
            &"spec.model.architecture.numHeads: 5 does not divide hiddenSize 64".to_string()
        ),
        "{errs:?}"
    );
    assert!(errs.contains(
        &"spec.model.architecture.numKvHeads: gpt2 has no grouped-query attention".to_string()
    ));

    let mut v = pipeline();
    v["model"]["path"] = json!("/models/gpt2");
    assert!(
        errors_of(v).contains(&"spec.model.init: set either path or init, not both".to_string())
    );

    let mut v = pipeline();
    v["model"]["architecture"]["vocabSize"] = json!(1000);
    assert!(errors_of(v)[0].starts_with("spec.model.architecture.vocabSize: 1000 is smaller"));
}

#[test]
fn lengths_fit_the_model() {
    let mut v = pipeline();
    v["stages"][2]["rl"]["generation"]["maxNewTokens"] = json!(64);
    v["stages"][1]["training"]["maxLength"] = json!(4096);
    let errs = errors_of(v);
    assert!(errs.contains(
        &"spec.stages[1].training.maxLength: 4096 exceeds the model's maxPositions 128".to_string()
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.stages[2].rl.generation.maxNewTokens: 64 leaves no room"))
    );
}

#[test]
fn lora_targets_must_exist_in_the_family() {
    let mut v = pipeline();
    v["parallelism"]["lora"] = json!({"targetModules": ["c_attn", "q_proj"]});
    let errs = errors_of(v);
    assert!(
        errs[0].starts_with(
            "spec.stages[0].parallelism.lora.targetModules[1]: \"q_proj\" is not a module"
        ),
        "{errs:?}"
    );

    let mut v = pipeline();
    v["parallelism"]["lora"] = json!({"rank": 4});
    let p = resolve(v).unwrap();
    let lora = p.stage("rm").unwrap().parallelism.lora.clone().unwrap();
    assert_eq!(
        (lora.rank, lora.alpha, lora.target_modules.len()),
        (4, 8.0, 3)
    );
}

#[test]
fn a_random_model_needs_a_family_and_a_folder_brings_its_own() {
    let mut v = pipeline();
    v["model"].as_object_mut().unwrap().remove("family");
    assert!(
        errors_of(v).contains(&"spec.model.family: init: random needs a family (a model folder names its own in config.json)".to_string())
    );

    let mut v = pipeline();
    v["model"] = json!({"path": "/models/qwen"});
    v["parallelism"]["lora"] = json!({"rank": 4});
    let p = resolve(v).unwrap();
    assert_eq!(p.model.family, None);
    // Any family's modules: the trainer keeps those the folder's model has.
    let lora = p.stage("sft").unwrap().parallelism.lora.clone().unwrap();
    assert!(lora.target_modules.contains(&"c_attn".to_string()));
    assert!(lora.target_modules.contains(&"q_proj".to_string()));
}

#[test]
fn rotary_families_share_the_architecture_checks() {
    let mut v = pipeline();
    v["model"]["family"] = json!("qwen3");
    v["model"]["architecture"]["numKvHeads"] = json!(3);
    v["model"]["architecture"]["hiddenSize"] = json!(36);
    let errs = errors_of(v);
    assert!(
        errs.contains(
            &"spec.model.architecture.numKvHeads: 3 does not divide numHeads 4".to_string()
        ),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with(
            "spec.model.architecture.hiddenSize: qwen3's rotary embeddings need an even head size"
        )),
        "{errs:?}"
    );
}

#[test]
fn opt_and_bloom_have_neither_grouped_query_attention_nor_rotary_checks() {
    for family in ["opt", "bloom"] {
        let mut v = pipeline();
        v["model"]["family"] = json!(family);
        v["model"]["architecture"]["numKvHeads"] = json!(1);
        // An odd head size (60 / 4): only rotary embeddings need an even one.
        v["model"]["architecture"]["hiddenSize"] = json!(60);
        assert_eq!(
            errors_of(v),
            [format!(
                "spec.model.architecture.numKvHeads: {family} has no grouped-query attention"
            )]
        );
    }

    let mut v = pipeline();
    v["model"]["family"] = json!("bloom");
    v["model"]["architecture"]["intermediateSize"] = json!(100);
    assert_eq!(
        errors_of(v),
        ["spec.model.architecture.intermediateSize: bloom's MLP is always 4 x hiddenSize (256)"]
    );

    for (family, modules) in [
        (
            "opt",
            vec!["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        ),
        (
            "bloom",
            vec!["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        ),
    ] {
        let mut v = pipeline();
        v["model"]["family"] = json!(family);
        v["parallelism"]["lora"] = json!({"rank": 4});
        let p = resolve(v).unwrap();
        let lora = p.stage("sft").unwrap().parallelism.lora.clone().unwrap();
        assert_eq!(lora.target_modules, modules);
    }
}

#[test]
fn parquet_is_inferred_from_the_extension_and_fields_need_a_file() {
    let mut v = pipeline();
    v["stages"][0]["dataset"] =
        json!({"path": "/data/train.parquet", "fields": {"prompt": "question"}});
    v["stages"][1]["dataset"] = json!({"path": "/data/pairs.jsonl"});
    let p = resolve(v).unwrap();
    match &p.stage("sft").unwrap().dataset {
        ResolvedDataset::File { format, fields, .. } => {
            assert_eq!(*format, crate::DatasetFormat::Parquet);
            assert_eq!(
                (fields.column("prompt"), fields.column("response")),
                ("question", "response")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &p.stage("rm").unwrap().dataset,
        ResolvedDataset::File {
            format: crate::DatasetFormat::Jsonl,
            ..
        }
    ));

    let mut v = pipeline();
    v["stages"][0]["dataset"] = json!({"synthetic": {"task": "copy"}, "fields": {"prompt": "q"}});
    assert!(errors_of(v).contains(
        &"spec.stages[0].dataset.fields: fields applies to path, not to synthetic".to_string()
    ));
}

#[test]
fn dataset_needs_exactly_one_source() {
    let mut v = pipeline();
    v["stages"][0]["dataset"] = json!({});
    v["stages"][1]["dataset"] = json!({"path": "/data/x.jsonl", "synthetic": {"task": "copy"}});
    let errs = errors_of(v);
    assert!(errs.contains(
        &"spec.stages[0].dataset: set path (a file in the pod) or synthetic".to_string()
    ));
    assert!(
        errs.contains(
            &"spec.stages[1].dataset: set either path or synthetic, not both".to_string()
        )
    );
}

#[test]
fn adaptive_kl_needs_a_positive_target() {
    let mut v = pipeline();
    v["stages"][2]["rl"]["targetKl"] = json!(0.0);
    assert_eq!(
        errors_of(v),
        vec!["spec.stages[2].rl.targetKl: must be above 0 (leave it out for a fixed klCoef)"]
    );
}

#[test]
fn adam_epsilon_must_be_positive() {
    let with_epsilon = |eps: f64| {
        let mut v = pipeline();
        v["stages"][0]["training"]["adamEpsilon"] = json!(eps);
        v
    };
    for bad in [0.0, -1e-8] {
        let expected = "spec.stages[0].training.adamEpsilon: must be above 0";
        assert_eq!(errors_of(with_epsilon(bad)), vec![expected], "{bad}");
    }
    let p = resolve(with_epsilon(1e-6)).unwrap();
    assert_eq!(p.stage("sft").unwrap().training.adam_epsilon, 1e-6);
}

#[path = "rl_tests.rs"]
mod rl_tests;
