use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use super::*;

type Labels<'a> = &'a [(&'a str, &'a str)];

fn metrics() -> TrainerMetrics {
    let labels = [
        ("rlhf_job", "demo"),
        ("namespace", "ml"),
        ("stage", "ppo"),
        ("rank", "0"),
    ];
    TrainerMetrics::new(
        labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

#[test]
fn a_record_sets_the_architecture_metric_names() {
    let m = metrics();
    let record = serde_json::from_value(serde_json::json!({
        "step": 7, "reward_mean": 1.5, "kl": 0.25, "policy_loss": -0.125, "value_loss": 0.5, "clip_fraction": 0.0625,
        "phases": {"experience": {"samples_per_second": 12.0, "tokens_per_second": 768.0, "tflops": 0.5}},
        "memory": {"cpu": {"rss": 1048576.0, "peak": 2097152.0}},
        "eval": {"reward_mean": 99.0}
    }))
    .unwrap();
    m.observe(&record);
    let text = m.render();
    let expected: [(&str, Labels, f64); 11] = [
        ("rlhf_trainer_step", &[], 7.0),
        ("rlhf_trainer_reward_mean", &[], 1.5),
        ("rlhf_trainer_kl", &[], 0.25),
        ("rlhf_trainer_clip_fraction", &[], 0.0625),
        ("rlhf_trainer_loss", &[("kind", "policy")], -0.125),
        ("rlhf_trainer_loss", &[("kind", "value")], 0.5),
        (
            "rlhf_trainer_samples_per_second",
            &[("phase", "experience")],
            12.0,
        ),
        (
            "rlhf_trainer_tokens_per_second",
            &[("phase", "experience")],
            768.0,
        ),
        ("rlhf_trainer_tflops", &[("phase", "experience")], 0.5),
        (
            "rlhf_trainer_memory_bytes",
            &[("device", "cpu"), ("kind", "rss")],
            1048576.0,
        ),
        (
            "rlhf_trainer_memory_bytes",
            &[("device", "cpu"), ("kind", "peak")],
            2097152.0,
        ),
    ];
    for (name, labels, value) in expected {
        let all: Vec<(&str, &str)> = [
            ("rlhf_job", "demo"),
            ("namespace", "ml"),
            ("stage", "ppo"),
            ("rank", "0"),
        ]
        .into_iter()
        .chain(labels.iter().copied())
        .collect();
        assert_eq!(
            sample(&text, name, &all),
            Some(value),
            "{name} {labels:?} in\n{text}"
        );
    }
    assert!(
        !text.contains(" 99"),
        "held-out values stay in the log: {text}"
    );
}

#[test]
fn the_server_answers_metrics_and_nothing_else() {
    let m = Arc::new(metrics());
    m.observe(&Record {
        step: 3,
        loss: Some(2.5),
        ..Record::default()
    });
    let port = serve(m, 0).unwrap();
    let get = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = get("/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.contains("rlhf_trainer_loss{kind=\"train\""),
        "{reply}"
    );
    assert!(get("/other").starts_with("HTTP/1.1 404"));
}

#[test]
fn process_memory_reads_this_process() {
    let (rss, peak) = process_memory().unwrap();
    assert!(rss > 1e6 && peak >= rss, "rss {rss} peak {peak}");
}

/// The value of the series `name` whose labels include all of `labels` (any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let set = series
                .strip_prefix(name)?
                .trim_matches(|c| c == '{' || c == '}');
            let have: Vec<&str> = set.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.parse().ok())?
        })
}
