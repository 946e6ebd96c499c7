//! `scrape` against a canned HTTP server on 127.0.0.1 that holds the connection open after
//! answering (keep-alive), so a scrape that waits for the server to hang up would time out.
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A server answering every connection's first request with `reply`; returns its port.
async fn canned(reply: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(request.starts_with(b"GET /metrics HTTP/1.1\r\n"));
                let _ = stream.write_all(&reply).await;
                // Keep the connection open: the client must end it once it has the body.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    port
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_200_answer_is_read_without_waiting_for_the_server_to_hang_up() {
    let port = canned(response("200 OK", "rlhf_trainer_step 3\n")).await;
    let started = Instant::now();
    let text = scrape("127.0.0.1", port).await;
    assert_eq!(text.as_deref(), Some("rlhf_trainer_step 3\n"));
    assert!(
        started.elapsed() < SCRAPE_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_redirect_or_error_status_is_no_progress() {
    for status in [
        "302 Found\r\nLocation: http://10.0.0.1/metrics",
        "404 Not Found",
    ] {
        let port = canned(response(status, "rlhf_trainer_step 3\n")).await;
        assert_eq!(scrape("127.0.0.1", port).await, None, "{status}");
    }
}

#[tokio::test]
async fn a_body_over_the_cap_is_dropped() {
    let body = "#".repeat(MAX_RESPONSE_BYTES + 1);
    let port = canned(response("200 OK", &body)).await;
    assert_eq!(scrape("127.0.0.1", port).await, None);
}

#[tokio::test]
async fn a_silent_server_or_a_host_name_gives_up() {
    let port = canned(Vec::new()).await;
    let started = Instant::now();
    assert_eq!(scrape("127.0.0.1", port).await, None);
    let waited = started.elapsed();
    assert!(
        waited >= SCRAPE_TIMEOUT && waited < SCRAPE_TIMEOUT * 2,
        "{waited:?}"
    );
    assert_eq!(
        scrape("localhost", port).await,
        None,
        "only pod IPs are dialled"
    );
}
