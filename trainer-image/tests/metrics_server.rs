//! The metrics server answers scrapers concurrently: a client that connects and says nothing
//! does not hold up others, and a request with oversized headers is refused.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_trainer::metrics::{TrainerMetrics, serve};
use rlhf_trainer::record::Record;

/// Well under the server's header timeout, so a server that waits for the silent client fails.
const BOUND: Duration = Duration::from_secs(2);

fn server() -> u16 {
    let labels = HashMap::from([("rank".to_string(), "0".to_string())]);
    let metrics = Arc::new(TrainerMetrics::new(labels).unwrap());
    metrics.observe(&Record {
        step: 3,
        ..Default::default()
    });
    serve(metrics, 0).unwrap()
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(BOUND * 2)).unwrap();
    stream
}

/// Sends `request` and reads until the server closes; whatever arrived, even if the read failed.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = connect(port);
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

fn get_metrics(port: u16) -> String {
    exchange(port, b"GET /metrics HTTP/1.1\r\nHost: trainer\r\n\r\n")
}

#[test]
fn a_silent_client_does_not_hold_up_two_concurrent_scrapes() {
    let port = server();
    let _silent = connect(port);
    std::thread::sleep(Duration::from_millis(100)); // accepted before the scrapes arrive
    let started = Instant::now();
    let scrapes: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get_metrics(port)))
        .collect();
    for scrape in scrapes {
        let reply = scrape.join().unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("rlhf_trainer_step{rank=\"0\"} 3"), "{reply}");
    }
    assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
}

#[test]
fn oversized_headers_are_refused_and_the_server_goes_on() {
    let port = server();
    let padding = "x".repeat(64 << 10);
    let request = format!("GET /metrics HTTP/1.1\r\nHost: trainer\r\nX-Padding: {padding}\r\n\r\n");
    let reply = exchange(port, request.as_bytes());
    // The refusal (431) may be lost to a reset as the server closes on unread input.
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{}",
        reply.chars().take(200).collect::<String>()
    );
    assert!(get_metrics(port).starts_with("HTTP/1.1 200 OK\r\n"));
}
