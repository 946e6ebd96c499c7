use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlhf-checkpoint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ppo_state(round: u64) -> State {
    State::ppo(
        round,
        PpoState {
            rng: u64::MAX - round, // above 2^53: must not pass through an f64
            kl_coef: 0.1 + 1e-17 * round as f64 + std::f64::consts::PI * 1e-9,
            actor_steps: round * 4,
            critic_steps: round * 4 + 1,
        },
    )
}

fn snapshot(step: u64) -> Snapshot {
    Snapshot {
        tensors: vec![(
            "actor.weight.w".into(),
            Tensor::from_slice(&[step as f32, 2.0, 3.0]),
        )],
        state: ppo_state(step),
    }
}

fn latest_ok(root: &Path) -> Option<Restored> {
    latest(root).unwrap()
}

/// Why `dir` is skipped as damaged.
fn damage(dir: &Path) -> String {
    match read(dir) {
        Err(Unusable::Damaged(reason)) => reason,
        other => panic!("{} is not damaged: {other:?}", dir.display()),
    }
}

#[test]
fn a_saved_checkpoint_reads_back_exactly() {
    let root = scratch("roundtrip");
    let dir = save(&root, &snapshot(40)).unwrap();
    assert_eq!(dir, root.join("checkpoints/step-00000040"));
    let restored = latest_ok(&root).unwrap();
    assert_eq!(restored.step(), 40);
    assert_eq!(restored.state, ppo_state(40));
    let text = std::fs::read_to_string(dir.join(STATE)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1, "an integer version at the top: {text}");
    assert_eq!(
        restored.tensors["actor.weight.w"],
        Tensor::from_slice(&[40f32, 2.0, 3.0])
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn only_the_newest_two_are_kept_and_the_newest_wins() {
    let root = scratch("keep");
    for step in [10, 20, 30] {
        save(&root, &snapshot(step)).unwrap();
    }
    assert_eq!(complete_steps(&root.join("checkpoints")), vec![30, 20]);
    assert_eq!(latest_ok(&root).unwrap().step(), 30);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn truncated_corrupt_or_unfinished_checkpoints_are_skipped() {
    let root = scratch("damaged");
    assert!(latest_ok(&root).is_none(), "no checkpoints yet");
    save(&root, &snapshot(10)).unwrap();
    save(&root, &snapshot(20)).unwrap();
    let newest = root.join("checkpoints/step-00000020");
    // Truncated tensors: falls back to step 10.
    let tensors = newest.join(TENSORS);
    let bytes = std::fs::read(&tensors).unwrap();
    std::fs::write(&tensors, &bytes[..bytes.len() - 5]).unwrap();
    assert!(damage(&newest).contains("(truncated?)"));
    assert_eq!(latest_ok(&root).unwrap().step(), 10);
    // Same length, one byte flipped.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    std::fs::write(&tensors, &flipped).unwrap();
    assert!(damage(&newest).contains("(corrupt)"));
    // No manifest (a folder someone copied by hand), and a half-written hidden folder.
    std::fs::remove_file(newest.join(MANIFEST)).unwrap();
    assert!(damage(&newest).starts_with("no readable manifest.json"));
    std::fs::create_dir_all(root.join("checkpoints/.partial-step-00000030")).unwrap();
    assert_eq!(latest_ok(&root).unwrap().step(), 10);
    let _ = std::fs::remove_dir_all(&root);
}

/// Replaces the newest checkpoint's state.json by `text`, manifest updated: an intact checkpoint.
fn rewrite_state(dir: &Path, text: &str) {
    std::fs::write(dir.join(STATE), text).unwrap();
    let path = dir.join(MANIFEST);
    let mut manifest: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest.files.insert(
        STATE.into(),
        FileEntry {
            bytes: text.len() as u64,
            sha256: sha256_hex(text.as_bytes()),
        },
    );
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// The error of resuming from a checkpoint at step 5 whose state.json is `text`.
fn state_error(name: &str, text: &str) -> String {
    let root = scratch(name);
    let dir = save(&root, &snapshot(5)).unwrap();
    rewrite_state(&dir, text);
    let message = latest(&root).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&root);
    let path = dir.join(STATE).display().to_string();
    assert!(message.starts_with(&path), "names {path}: {message}");
    message
}

#[test]
fn a_misspelt_or_missing_state_field_is_an_error_naming_file_and_field() {
    let misspelt = state_error(
        "misspelt",
        r#"{"version": 1, "step": 5, "ppo": {"rng": 1, "kl_coeff": 0.1, "actor_steps": 2, "critic_steps": 2}}"#,
    );
    assert!(misspelt.contains("unknown field `kl_coeff`"), "{misspelt}");
    let missing = state_error(
        "missing",
        r#"{"version": 1, "step": 5, "ppo": {"rng": 1, "actor_steps": 2, "critic_steps": 2}}"#,
    );
    assert!(missing.contains("missing field `kl_coef`"), "{missing}");
    let unversioned = state_error("unversioned", r#"{"step": 5}"#);
    assert!(
        unversioned.contains("missing field `version`"),
        "{unversioned}"
    );
}

#[test]
fn an_unknown_state_version_is_an_error_naming_file_and_version() {
    let newer = state_error("version", r#"{"version": 2, "step": 5, "future": true}"#);
    assert!(newer.contains("unknown state version 2"), "{newer}");
    let text = state_error("textual", r#"{"version": "1", "step": 5}"#);
    assert!(text.contains("invalid type: string"), "{text}");
}

#[test]
fn a_supervised_state_has_no_ppo_part() {
    let root = scratch("supervised");
    let snap = Snapshot {
        tensors: snapshot(3).tensors,
        state: State::supervised(3),
    };
    let dir = save(&root, &snap).unwrap();
    let restored = latest_ok(&root).unwrap();
    assert_eq!(restored.state, State::supervised(3));
    let message = restored.ppo().unwrap_err().to_string();
    assert!(
        message.contains(&dir.join(STATE).display().to_string())
            && message.contains("missing field `ppo`"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
