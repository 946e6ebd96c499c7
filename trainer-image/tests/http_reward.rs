//! The remote reward client against a real HTTP server that this test starts (hyper, on its own
//! thread): a service computing exactAnswer gives the built-in function's scores, a flaky one is
//! retried, and broken, malformed, short and slow answers are clear errors.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rlhf_trainer::rewards::{HttpReward, RewardBatch, exact_answer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Requests seen by the server, by path.
#[derive(Default)]
struct Calls {
    flaky: AtomicUsize,
    broken: AtomicUsize,
    missing: AtomicUsize,
}

/// The service's exactAnswer: what a user's verifier would compute from the documented batch.
fn exact_scores(batch: &Value) -> Value {
    let responses = batch["responses"].as_array().unwrap();
    let references = batch["references"].as_array().unwrap();
    let scores: Vec<f64> = responses
        .iter()
        .zip(references)
        .map(|(r, reference)| exact_answer(r.as_str().unwrap(), reference.as_str().unwrap()))
        .collect();
    json!({ "scores": scores })
}

async fn answer(path: String, body: Bytes, calls: &Calls) -> (StatusCode, String) {
    let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = |v: Value| (StatusCode::OK, v.to_string());
    match path.as_str() {
        "/exact" => ok(exact_scores(&batch)),
        "/flaky" if calls.flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
            (StatusCode::SERVICE_UNAVAILABLE, String::new())
        }
        "/flaky" => ok(exact_scores(&batch)),
        "/broken" => {
            calls.broken.fetch_add(1, Ordering::SeqCst);
            (StatusCode::INTERNAL_SERVER_ERROR, "boom".into())
        }
        "/malformed" => ok(json!({"score": 1})),
        "/short" => ok(json!({"scores": [1.0]})),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(exact_scores(&batch))
        }
        _ => {
            calls.missing.fetch_add(1, Ordering::SeqCst);
            (StatusCode::NOT_FOUND, String::new())
        }
    }
}

/// Starts the server on a free port; returns its base URL and call counts.
fn start_server() -> (String, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = calls.clone();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let calls = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let calls = calls.clone();
                        async move {
                            let path = request.uri().path().to_string();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let (status, text) = answer(path, body, &calls).await;
                            let mut response = Response::new(Full::new(Bytes::from(text)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    (format!("http://127.0.0.1:{port}"), calls)
}

const PROMPTS: [&str; 5] = ["3+4=", "10+5=", "1+1=", "copy: owl =>", "20+22="];
const RESPONSES: [&str; 5] = ["7.", "16.", "#### 2", " owl.", "the answer is 42"];
const REFERENCES: [&str; 5] = ["7.", "15.", "2.", " owl.", "42."];

fn score(url: &str, timeout_seconds: f64) -> rlhf_trainer::error::Result<Vec<f64>> {
    let responses: Vec<String> = RESPONSES.iter().map(|r| r.to_string()).collect();
    let references: Vec<Option<&str>> = REFERENCES.iter().map(|r| Some(*r)).collect();
    let batch = RewardBatch {
        prompts: &PROMPTS,
        responses: &responses,
        references: &references,
    };
    HttpReward::new(url, timeout_seconds, "spec.stages[1].rewards[0].http.url")?.score(&batch)
}

fn error_of(url: &str, timeout_seconds: f64) -> String {
    score(url, timeout_seconds).unwrap_err().to_string()
}

#[test]
fn a_remote_exact_answer_scores_like_the_built_in_one() {
    let (base, calls) = start_server();
    let built_in: Vec<f64> = RESPONSES
        .iter()
        .zip(REFERENCES)
        .map(|(r, reference)| exact_answer(r, reference))
        .collect();
    assert_eq!(built_in, [1.0, 0.0, 1.0, 1.0, 1.0]);
    assert_eq!(score(&format!("{base}/exact"), 5.0).unwrap(), built_in);
    // Two 503s, then an answer: within the three attempts.
    assert_eq!(score(&format!("{base}/flaky"), 5.0).unwrap(), built_in);
    assert_eq!(calls.flaky.load(Ordering::SeqCst), 3);
}

#[test]
fn failing_services_are_clear_errors_after_bounded_retries() {
    let (base, calls) = start_server();
    let broken = error_of(&format!("{base}/broken"), 5.0);
    assert!(
        broken.contains("/broken") && broken.contains("HTTP 500") && broken.contains("3 attempts"),
        "{broken}"
    );
    assert_eq!(
        calls.broken.load(Ordering::SeqCst),
        3,
        "retried, then gave up"
    );
    let missing = error_of(&format!("{base}/nowhere"), 5.0);
    assert!(missing.contains("HTTP 404"), "{missing}");
    assert_eq!(
        calls.missing.load(Ordering::SeqCst),
        1,
        "a 404 is not retried"
    );
    let malformed = error_of(&format!("{base}/malformed"), 5.0);
    assert!(
        malformed.contains(r#"not {"scores": [number]}"#),
        "{malformed}"
    );
    let short = error_of(&format!("{base}/short"), 5.0);
    assert!(short.contains("1 scores for 5 responses"), "{short}");
    let slow = error_of(&format!("{base}/slow"), 0.2);
    assert!(
        slow.contains("no answer within") && slow.contains("3 attempts"),
        "{slow}"
    );
    let bad_url = error_of("https://example.invalid/score", 1.0);
    assert!(
        bad_url.contains("spec.stages[1].rewards[0].http.url"),
        "{bad_url}"
    );
    // Nothing listens on port 9 of localhost (discard): connection refused, retried.
    let refused = error_of("http://127.0.0.1:9/score", 1.0);
    assert!(refused.contains("cannot connect"), "{refused}");
}
