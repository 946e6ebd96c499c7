//! Reads a stage's progress from its rank 0's Prometheus endpoint (`http://<podIP>:<port>/metrics`),
//! the same endpoint Prometheus scrapes, so trainer pods need no write access to the API.
use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::observe::{ObservedPod, PodPhase, TrainerProgress, trainer_progress};
use crate::crd::StageStatus;

/// A scrape that takes longer than this is skipped (a hung trainer must not stall reconciles).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Trainer metrics are small; anything bigger is not ours.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// The text of `GET /metrics` on `ip:port`, None when it cannot be read in time.
async fn scrape(ip: &str, port: u16) -> Option<String> {
    let read = async {
        let mut stream = TcpStream::connect((ip, port)).await.ok()?;
        let request =
            format!("GET /metrics HTTP/1.0\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut body)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then_some(())?;
        head.split_whitespace()
            .nth(1)
            .filter(|code| *code == "200")?;
        Some(body.to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Progress of every stage whose current gang's rank 0 runs, read concurrently.
pub async fn read_all(
    stages: &[StageStatus],
    pods: &[ObservedPod],
    metrics_port: u16,
) -> BTreeMap<String, TrainerProgress> {
    let targets: Vec<(String, String)> = stages
        .iter()
        .filter_map(|s| {
            let rank0 = pods.iter().find(|p| {
                p.stage == s.name
                    && p.node_rank == 0
                    && p.generation == s.gang_generation
                    && p.phase == PodPhase::Running
                    && !p.deleting
            })?;
            Some((s.name.clone(), rank0.ip.clone()?))
        })
        .collect();
    let reads = targets.into_iter().map(|(stage, ip)| async move {
        let text = scrape(&ip, metrics_port).await?;
        Some((stage, trainer_progress(&text)?))
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}
