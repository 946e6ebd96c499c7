//! The RL kinds' resolution: shared defaults by kind, reward sources, and their errors.
use serde_json::json;

use super::{errors_of, pipeline, resolve, reward_models};
use crate::{KlEstimator, LossAggregation, RewardSource, WeightsSource};

/// sft, then a grpo stage on `arithmetic` rewarded by `exactAnswer` (no reward model).
fn grpo_pipeline() -> serde_json::Value {
    let mut v = pipeline();
    v["stages"][2] = json!({
        "name": "grpo", "kind": "grpo", "dataset": {"synthetic": {"task": "arithmetic"}},
        "rewards": [{"function": "exactAnswer"}],
        "training": {"maxLength": 64, "batchSize": 16, "microBatchSize": 4},
        "rl": {"generation": {"maxNewTokens": 8}}
    });
    v
}

#[test]
fn grpo_defaults_keep_kl_in_the_loss_and_build_no_critic() {
    let p = resolve(grpo_pipeline()).unwrap();
    let g = p.stage("grpo").unwrap();
    // Depends on every sft stage only: no reward model is named.
    assert_eq!(g.depends_on, ["sft"]);
    assert_eq!(g.models.init, WeightsSource::Stage("sft".into()));
    assert_eq!(g.models.critic, None);
    let rl = g.rl.as_ref().unwrap();
    assert_eq!(
        (rl.group_size, rl.rollout_batch_size, rl.kl_in_reward),
        (4, 4, false)
    );
    assert_eq!(rl.kl_estimator, KlEstimator::K3);
    assert_eq!(rl.clip_range_high, rl.clip_range);
    assert_eq!(rl.rewards[0].source, RewardSource::ExactAnswer);
    assert_eq!(rl.rewards[0].name, "exactAnswer");
    let grpo = g.grpo.as_ref().unwrap();
    assert!(grpo.scale_by_std && !grpo.dynamic_sampling);
    assert_eq!(grpo.loss_aggregation, LossAggregation::SequenceMean);
    assert!(g.ppo.is_none());
}

#[test]
fn a_named_reward_model_joins_the_default_dependencies() {
    let mut v = grpo_pipeline();
    v["stages"][2]["rewards"] = json!([
        {"model": {"stage": "rm"}, "weight": 0.5},
        {"function": "format", "pattern": "^[0-9]+\\.$"},
        {"function": "format", "pattern": "\\."},
        {"function": "length", "targetTokens": 4},
        {"http": {"url": "http://scorer.default.svc:8080/score"}}
    ]);
    let p = resolve(v).unwrap();
    let g = p.stage("grpo").unwrap();
    assert_eq!(g.depends_on, ["sft", "rm"]);
    assert_eq!(reward_models(g), [WeightsSource::Stage("rm".into())]);
    let rl = g.rl.as_ref().unwrap();
    let names: Vec<&str> = rl.rewards.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["rm", "format", "format-1", "length", "http"]);
    assert_eq!(rl.rewards[0].weight, 0.5);
    assert_eq!(
        rl.rewards[4].source,
        RewardSource::Http {
            url: "http://scorer.default.svc:8080/score".into(),
            timeout_seconds: 30.0
        }
    );
    assert_eq!(
        rl.rewards[3].source,
        RewardSource::Length { target_tokens: 4 }
    );
}

#[test]
fn ppo_critic_defaults_to_the_actor_without_a_reward_model() {
    let mut v = pipeline();
    v["stages"][2]["models"] = json!({"init": {"stage": "sft"}});
    v["stages"][2]["rewards"] = json!([{"function": "exactAnswer"}]);
    let p = resolve(v).unwrap();
    let ppo = p.stage("ppo").unwrap();
    assert_eq!(ppo.models.critic, Some(WeightsSource::Stage("sft".into())));
    let rl = ppo.rl.as_ref().unwrap();
    assert_eq!((rl.group_size, rl.kl_in_reward), (1, true));
    assert_eq!(rl.kl_estimator, KlEstimator::K1);
}

#[test]
fn reward_entries_are_checked_field_by_field() {
    let mut v = grpo_pipeline();
    v["stages"][2]["rewards"] = json!([
        {"function": "format"},
        {"function": "exactAnswer", "http": {"url": "http://x:1/"}},
        {"http": {"url": "https://x/score", "timeoutSeconds": 0}},
        {"function": "exactAnswer", "pattern": "x"},
        {"model": {"stage": "sft"}}
    ]);
    let errs = errors_of(v);
    for expected in [
        "spec.stages[2].rewards[0].pattern: a format reward needs a pattern (a regular expression)",
        "spec.stages[2].rewards[1]: set exactly one of model, function and http",
        "spec.stages[2].rewards[2].http.url: \"https://x/score\": an http:// URL (the trainer speaks plain HTTP)",
        "spec.stages[2].rewards[2].http.timeoutSeconds: must be above 0",
        "spec.stages[2].rewards[3].pattern: pattern does not apply to this reward",
        "spec.stages[2].rewards[4].model.stage: stage \"sft\" is a sft stage, which cannot provide this model",
    ] {
        assert!(
            errs.contains(&expected.to_string()),
            "{expected}\n{errs:#?}"
        );
    }
}

#[test]
fn reward_model_and_rewards_are_not_both_set() {
    let mut v = pipeline();
    v["stages"][2]["rewards"] = json!([{"function": "exactAnswer"}]);
    assert_eq!(
        errors_of(v),
        [
            "spec.stages[2].models.rewardModel: set either models.rewardModel or rewards (a list that can hold the reward model)"
        ]
    );
    let mut v = grpo_pipeline();
    v["stages"][2].as_object_mut().unwrap().remove("rewards");
    assert!(errors_of(v)[0].starts_with("spec.stages[2].rewards: a grpo stage needs a reward"));
}

#[test]
fn groups_and_rounds_must_fit_the_batch() {
    let mut v = grpo_pipeline();
    v["stages"][2]["rl"]["groupSize"] = json!(1);
    v["stages"][2]["rl"]["rolloutBatchSize"] = json!(16);
    assert_eq!(
        errors_of(v),
        ["spec.stages[2].rl.groupSize: a grpo stage compares responses within a group: at least 2"]
    );
    let mut v = grpo_pipeline();
    v["stages"][2]["training"]["batchSize"] = json!(32);
    v["stages"][2]["rl"]["rolloutBatchSize"] = json!(12);
    assert_eq!(
        errors_of(v),
        [
            "spec.stages[2].rl.rolloutBatchSize: 12 prompts x groupSize 4 = 48 responses per round, not a multiple of training.batchSize 32 (responses per optimizer step)"
        ]
    );
    let mut v = grpo_pipeline();
    v["stages"][2]["grpo"] = json!({"lossAggregation": "tokenMean"});
    v["stages"][1]["rl"] = json!({});
    v["stages"][1]["grpo"] = json!({});
    let errs = errors_of(v);
    assert!(errs.contains(&"spec.stages[1].rl: rl settings on a rm stage (they are ppo, grpo, rloo and reinforce only)".to_string()), "{errs:?}");
    assert!(
        errs.contains(
            &"spec.stages[1].grpo: grpo settings on a rm stage (they are grpo only)".to_string()
        ),
        "{errs:?}"
    );
}
