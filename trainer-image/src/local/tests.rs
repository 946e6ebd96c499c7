use super::*;
use rlhf_spec::RewardSource;
use serde_json::json;

const MANIFEST: &str = r#"
metadata: {name: files}
spec:
  image: unused
  model: {family: gpt2, path: ./base, tokenizer: {path: tok}}
  stages:
    - {name: sft, kind: sft, dataset: {path: data/sft.jsonl}}
    - name: ppo
      kind: ppo
      dependsOn: [sft]
      dataset: {path: /abs/prompts.jsonl}
      models: {init: {stage: sft}, rewardModel: {path: models/rm}}
      rl: {ptxCoef: 0.1, ptxDataset: {path: data/ptx.jsonl}}
"#;

#[test]
fn relative_paths_resolve_against_the_manifest_folder() {
    let (job, p) = parse(Path::new("/jobs/demo/job.yaml"), MANIFEST).unwrap();
    assert_eq!(job, "files");
    assert_eq!(
        p.model.weights,
        BaseWeights::Path("/jobs/demo/./base".into())
    );
    assert_eq!(
        p.model.tokenizer,
        ResolvedTokenizer::Path("/jobs/demo/tok".into())
    );
    let sft = p.stage("sft").unwrap();
    assert!(
        matches!(&sft.dataset, ResolvedDataset::File { path, .. } if path == "/jobs/demo/data/sft.jsonl")
    );
    let ppo = p.stage("ppo").unwrap();
    assert!(
        matches!(&ppo.dataset, ResolvedDataset::File { path, .. } if path == "/abs/prompts.jsonl"),
        "absolute stays"
    );
    let rl = ppo.rl.as_ref().unwrap();
    assert_eq!(
        rl.rewards[0].source,
        RewardSource::Model(WeightsSource::Path("/jobs/demo/models/rm".into()))
    );
    assert_eq!(ppo.models.init, WeightsSource::Stage("sft".into()));
    let ptx = rl.ptx_dataset.as_ref().unwrap();
    assert!(
        matches!(ptx, ResolvedDataset::File { path, .. } if path == "/jobs/demo/data/ptx.jsonl")
    );
}

#[test]
fn the_summary_holds_each_stages_first_and_last_evaluation() {
    let (_, p) = parse(Path::new("job.yaml"), MANIFEST).unwrap();
    let logs = BTreeMap::from([
        (
            "sft".to_string(),
            vec![
                json!({"step": 0, "eval": {"loss": 9.0}}),
                json!({"step": 1, "loss": 5.0}),
                json!({"step": 2, "eval": {"loss": 2.0}}),
            ]
            .into_iter()
            .map(|line| serde_json::from_value(line).unwrap())
            .collect(),
        ),
        ("ppo".to_string(), vec![]),
    ]);
    assert_eq!(
        serde_json::to_value(summary(&p, &logs)).unwrap(),
        json!({"stages": {"sft": {"kind": "sft", "first": {"loss": 9.0}, "last": {"loss": 2.0}}, "ppo": {"kind": "ppo", "first": null, "last": null}}})
    );
}

#[test]
fn fresh_runs_take_the_first_free_number() {
    let root = std::env::temp_dir().join(format!("rlhf-local-free-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("job-1")).unwrap();
    assert_eq!(first_free(&root, "job"), root.join("job-2"));
    let _ = std::fs::remove_dir_all(&root);
}
