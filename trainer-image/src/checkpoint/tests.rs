use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlhf-checkpoint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn snapshot(step: u64) -> Snapshot {
    Snapshot {
        step,
        tensors: vec![(
            "actor.weight.w".into(),
            Tensor::from_slice(&[step as f32, 2.0, 3.0]),
        )],
        state: serde_json::json!({"rng": step * 7}),
    }
}

#[test]
fn a_saved_checkpoint_reads_back_exactly() {
    let root = scratch("roundtrip");
    let dir = save(&root, &snapshot(40)).unwrap();
    assert_eq!(dir, root.join("checkpoints/step-00000040"));
    let restored = latest(&root).unwrap();
    assert_eq!(restored.step, 40);
    assert_eq!(restored.state["rng"], 280);
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
    assert_eq!(latest(&root).unwrap().step, 30);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn truncated_corrupt_or_unfinished_checkpoints_are_skipped() {
    let root = scratch("damaged");
    assert!(latest(&root).is_none(), "no checkpoints yet");
    save(&root, &snapshot(10)).unwrap();
    save(&root, &snapshot(20)).unwrap();
    let newest = root.join("checkpoints/step-00000020");
    // Truncated tensors: falls back to step 10.
    let tensors = newest.join(TENSORS);
    let bytes = std::fs::read(&tensors).unwrap();
    std::fs::write(&tensors, &bytes[..bytes.len() - 5]).unwrap();
    assert!(read(&newest).unwrap_err().contains("(truncated?)"));
    assert_eq!(latest(&root).unwrap().step, 10);
    // Same length, one byte flipped.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0xff;
    std::fs::write(&tensors, &flipped).unwrap();
    assert!(read(&newest).unwrap_err().contains("(corrupt)"));
    // No manifest (a folder someone copied by hand), and a half-written hidden folder.
    std::fs::remove_file(newest.join(MANIFEST)).unwrap();
    assert!(
        read(&newest)
            .unwrap_err()
            .starts_with("no readable manifest.json")
    );
    std::fs::create_dir_all(root.join("checkpoints/.partial-step-00000030")).unwrap();
    assert_eq!(latest(&root).unwrap().step, 10);
    let _ = std::fs::remove_dir_all(&root);
}
