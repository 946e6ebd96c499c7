//! `rlhf-trainer run` (what a pod runs) with LOCAL_WORLD_SIZE 2 launches two workers; each serves
//! its metrics on RLHF_METRICS_PORT + LOCAL_RANK while it trains, labelled with the job,
//! namespace, stage and rank; killing the launcher takes the workers with it.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rlhf_spec::{PipelineSpec, TrainerConfig, resolve_pipeline};

mod common;

const STAGES: &str = r#"
    - {name: sft, kind: sft, dataset: {synthetic: {task: copy, samples: 64}}, training: {batchSize: 8, microBatchSize: 4, epochs: 100, maxLength: 32}}
"#;

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: trainer\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// A port with the next one free too (the trainer adds LOCAL_RANK = 1).
fn free_port_pair() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn a_training_process_serves_labelled_metrics_on_its_port() {
    let dir = common::scratch("metrics-endpoint");
    let job = common::tiny_job("demo", "{nodes: 1, gpusPerNode: 2}", STAGES);
    let manifest: serde_json::Value = serde_yaml::from_str(&job).unwrap();
    let spec: PipelineSpec = serde_json::from_value(manifest["spec"].clone()).unwrap();
    let pipeline = resolve_pipeline(&spec, "spec").unwrap();
    let config = TrainerConfig {
        job: "demo".into(),
        namespace: "team-a".into(),
        model: pipeline.model.clone(),
        output_dir: dir.join("sft").to_string_lossy().into_owned(),
        stage_outputs: Default::default(),
        metrics_port: 1, // RLHF_METRICS_PORT wins
        stage: pipeline.stages[0].clone(),
    };
    let config_path = dir.join("trainer.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let base = free_port_pair();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"))
        .args(["run", "--config", config_path.to_str().unwrap()])
        .env("RLHF_METRICS_PORT", base.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port_pair().to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let text = loop {
        let reply = scrape(base + 1).unwrap_or_default();
        let step = reply
            .lines()
            .find(|l| l.starts_with("rlhf_trainer_step{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if step.is_some_and(|s| s >= 2.0) {
            break reply;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the trainer exited before serving metrics"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no metrics on port {}",
            base + 1
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = Instant::now();
    while scrape(base + 1).is_some() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "worker 1 outlived its killed launcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for label in [
        "rlhf_job=\"demo\"",
        "namespace=\"team-a\"",
        "stage=\"sft\"",
        "rank=\"1\"",
    ] {
        assert!(
            text.lines()
                .filter(|l| l.starts_with("rlhf_trainer_step{"))
                .all(|l| l.contains(label)),
            "{label} missing:\n{text}"
        );
    }
    for series in [
        "rlhf_trainer_loss{",
        "rlhf_trainer_samples_per_second{",
        "rlhf_trainer_tokens_per_second{",
        "rlhf_trainer_tflops{",
        "rlhf_trainer_memory_bytes{",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert!(
        text.contains("kind=\"rss\"")
            && text.contains("phase=\"train\"")
            && text.contains("kind=\"train\""),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
