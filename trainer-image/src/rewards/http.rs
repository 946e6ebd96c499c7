//! A remote reward service (README: Algorithms and rewards). The trainer POSTs one JSON batch per round,
//!   {"prompts": [string], "responses": [string], "references": [string | null]},
//! with `Content-Type: application/json`, and the service answers 200 with
//!   {"scores": [number]}
//! holding one finite score per response, in order. Plain HTTP only (the service is expected
//! inside the cluster). Connection errors, timeouts, 429 and 5xx are retried (three attempts in
//! all, 0.5 s then 1 s apart); any other status or a malformed answer is an error at once.
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Answers bigger than this are not scores.
const MAX_ANSWER_BYTES: usize = 16 << 20;
const ATTEMPTS: u32 = 3;

/// What the service receives.
#[derive(Serialize)]
pub struct RewardBatch<'a> {
    pub prompts: &'a [&'a str],
    pub responses: &'a [String],
    pub references: &'a [Option<&'a str>],
}

#[derive(Deserialize)]
struct Answer {
    scores: Vec<f64>,
}

/// Why an attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
}

fn failure(message: impl Into<String>, retry: bool) -> Failure {
    Failure {
        message: message.into(),
        retry,
    }
}

pub struct HttpReward {
    url: String,
    uri: Uri,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl HttpReward {
    /// `field` names the URL's place in the spec for errors.
    pub fn new(url: &str, timeout_seconds: f64, field: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::invalid(field, format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::invalid(
                field,
                format!("{url:?}: an http://host[:port]/path URL"),
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Error::Reward(format!("{url}: no runtime: {e}")))?;
        Ok(Self {
            url: url.to_string(),
            uri,
            timeout: Duration::from_secs_f64(timeout_seconds),
            runtime,
        })
    }

    /// One score per response, or an error naming the URL and what went wrong.
    pub fn score(&self, batch: &RewardBatch<'_>) -> Result<Vec<f64>> {
        let body = serde_json::to_vec(batch)
            .map_err(|e| Error::Reward(format!("{}: cannot encode the batch: {e}", self.url)))?;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                std::thread::sleep(Duration::from_millis(500 << (attempt - 2)));
            }
            let outcome = self.runtime.block_on(async {
                tokio::time::timeout(self.timeout, self.post(body.clone()))
                    .await
                    .unwrap_or_else(|_| {
                        Err(failure(
                            format!("no answer within {:?}", self.timeout),
                            true,
                        ))
                    })
            });
            match outcome.and_then(|text| parse(&text, batch.responses.len())) {
                Ok(scores) => return Ok(scores),
                Err(f) if f.retry => last = f.message,
                Err(f) => return Err(Error::Reward(format!("{}: {}", self.url, f.message))),
            }
        }
        Err(Error::Reward(format!(
            "{}: {last} (after {ATTEMPTS} attempts)",
            self.url
        )))
    }

    async fn post(&self, body: Vec<u8>) -> std::result::Result<Vec<u8>, Failure> {
        let host = self.uri.host().unwrap_or_default();
        let port = self.uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| failure(format!("cannot connect: {e}"), true))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failure(format!("no HTTP connection: {e}"), true))?;
        let connection = tokio::spawn(connection);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::post(path)
            .header(HOST, format!("{host}:{port}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failure(format!("bad request: {e}"), false))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| failure(format!("request failed: {e}"), true))?;
        let status = answer.status();
        let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failure(format!("answer unreadable: {e}"), true))?
            .to_bytes();
        connection.abort();
        if status != StatusCode::OK {
            let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(failure(format!("answered HTTP {status}"), retry));
        }
        Ok(bytes.to_vec())
    }
}

/// The scores of an answer for `expected` responses.
fn parse(body: &[u8], expected: usize) -> std::result::Result<Vec<f64>, Failure> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        failure(
            format!("the answer is not {{\"scores\": [number]}}: {e}"),
            false,
        )
    })?;
    if answer.scores.len() != expected {
        return Err(failure(
            format!(
                "answered {} scores for {expected} responses",
                answer.scores.len()
            ),
            false,
        ));
    }
    if let Some(i) = answer.scores.iter().position(|s| !s.is_finite()) {
        return Err(failure(format!("score {i} is not finite"), false));
    }
    Ok(answer.scores)
}
