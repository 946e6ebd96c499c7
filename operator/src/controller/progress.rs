//! Reads a stage's progress from its rank 0's Prometheus endpoint (`http://<podIP>:<port>/metrics`),
//! the same endpoint Prometheus scrapes, so trainer pods need no write access to the API.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::observe::{ObservedPod, PodPhase, TrainerProgress, trainer_progress};
use crate::crd::StageStatus;

/// A scrape that takes longer than this is skipped (a hung trainer must not stall reconciles).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Trainer metrics are small; anything bigger is not ours.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The text of `GET /metrics` on `ip:port`, None when it cannot be read in time.
async fn scrape(ip: &str, port: u16) -> Option<String> {
    // One deadline for connect, headers and body.
    tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(ip, port))
        .await
        .ok()
        .flatten()
}

/// One request on one connection to the pod's own address: a pod IP, never a name to resolve,
/// and a redirect is just a non-200 answer (nothing is followed).
async fn get_metrics(ip: &str, port: u16) -> Option<String> {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().ok()?, port);
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    let request = Request::get("/metrics")
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let read = async move {
        let response = sender.send_request(request).await.ok()?;
        (response.status() == StatusCode::OK).then_some(())?;
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    // The connection does the I/O and ends once `read` has dropped its sender; both run here
    // rather than in a spawned task so the deadline drops them together.
    futures::future::join(read, connection).await.0
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

#[cfg(test)]
mod tests;
