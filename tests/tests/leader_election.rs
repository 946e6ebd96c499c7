//! Leader election against the real API server: of two operator processes only the holder of the
//! Lease reconciles; when it is SIGKILLed the standby takes the Lease within the documented bound
//! (lease duration + retry interval) and reconciles; a leader stopped with SIGTERM hands over at
//! once; a leader that finds its Lease taken exits with a non-zero code.
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use rlhf_operator::leader::Timings;
use rlhf_operator::names::LEADER_LEASE;
use rlhf_test_support::{OperatorProcess, TestCluster, wait_until};

const LEASE_SECONDS: u64 = 6;
const RENEW_SECONDS: u64 = 2;
/// API latency and controller start-up on top of the documented bound.
const SLACK: Duration = Duration::from_secs(3);

/// The Lease's holder, "" when it has none or does not exist.
async fn holder(leases: &Api<Lease>) -> Result<String, String> {
    let lease = leases
        .get_opt(LEADER_LEASE)
        .await
        .map_err(|e| e.to_string())?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

async fn wait_for_holder(
    leases: &Api<Lease>,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&str) -> bool,
) -> String {
    wait_until(what, timeout, || async {
        let h = holder(leases).await?;
        if wanted(&h) {
            Ok(Some(h))
        } else {
            Err(format!("holder now: {h:?}"))
        }
    })
    .await
}

/// Identities are hostname-pid (POD_NAME is unset in tests).
fn holds(holder: &str, op: &OperatorProcess) -> bool {
    op.pid()
        .is_some_and(|pid| holder.ends_with(&format!("-{pid}")))
}

/// A plain HTTP/1.0 GET; returns (status code, body).
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

async fn admin_addr(op: &OperatorProcess) -> String {
    wait_until("the operator's metrics address in its log", WAIT, || {
        let addr = op.metrics_addr();
        async move { Ok(addr) }
    })
    .await
}

/// The value of an unlabelled (or fully labelled, as written) sample in /metrics.
async fn sample(addr: &str, series: &str) -> f64 {
    let (code, text) = http_get(addr, "/metrics").await.expect("scraping /metrics");
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
}

fn terminate(op: &OperatorProcess) {
    let pid = op.pid().expect("the operator runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("sending SIGTERM");
}

async fn wait_for_exit(op: &mut OperatorProcess, timeout: Duration) -> Option<i32> {
    wait_until("the operator to exit", timeout, || {
        let exited = (!op.is_running()).then(|| op.exit_code());
        async move { Ok(exited) }
    })
    .await
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let started = Instant::now();
    let timings = Timings::new(LEASE_SECONDS, RENEW_SECONDS).unwrap();
    let cluster = TestCluster::connect().await;
    let client = cluster.client.clone();
    let ns = cluster.namespace("leader").await;
    let (lease_s, renew_s) = (LEASE_SECONDS.to_string(), RENEW_SECONDS.to_string());
    let args = [
        "--leader-election-namespace",
        &ns,
        "--lease-duration-seconds",
        &lease_s,
        "--lease-renew-seconds",
        &renew_s,
    ];
    let a = OperatorProcess::start_with(&cluster.kubeconfig, &ns, &args);
    let b = OperatorProcess::start_with(&cluster.kubeconfig, &ns, &args);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    // Exactly one of the two holds the Lease.
    let first = wait_for_holder(&leases, "one operator to take the lease", WAIT, |h| {
        !h.is_empty()
    })
    .await;
    let (mut leader, mut standby) = match (holds(&first, &a), holds(&first, &b)) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => panic!(
            "lease holder {first:?} is neither operator ({:?}, {:?})",
            a.pid(),
            b.pid()
        ),
    };
    let lease = leases.get(LEADER_LEASE).await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_duration_seconds, Some(LEASE_SECONDS as i32));
    assert!(
        lease.acquire_time.is_some() && lease.renew_time.is_some(),
        "{lease:?}"
    );

    // Only the leader reconciles: the job gets a status; the standby never started its controller.
    let (ok, out) = kubectl_apply(
        &cluster,
        &ns,
        &pipeline_job("first", ["sft", "rm", "ppo"], 1, 1),
    )
    .await;
    assert!(ok, "{out}");
    wait_for_status(
        &client,
        &ns,
        "first",
        "the leader to reconcile the first job",
        |s| s.phase.is_some() && !s.stages.is_empty(),
    )
    .await;
    wait_for_pods(&client, &ns, "first", "sft", 1).await;
    let (leader_addr, standby_addr) = (admin_addr(&leader).await, admin_addr(&standby).await);
    assert_eq!(sample(&leader_addr, "rlhf_operator_is_leader").await, 1.0);
    // The counter moves when the reconcile that created the pods returns, which under load can
    // be a moment after the pods are visible.
    wait_until("the leader to count an ok reconcile", WAIT, || {
        let addr = leader_addr.clone();
        async move {
            let ok = sample(&addr, "rlhf_operator_reconciles_total{result=\"ok\"}").await;
            Ok((ok >= 1.0).then_some(ok))
        }
    })
    .await;
    assert_eq!(sample(&standby_addr, "rlhf_operator_is_leader").await, 0.0);
    assert_eq!(
        sample(
            &standby_addr,
            "rlhf_operator_reconciles_total{result=\"ok\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        sample(
            &standby_addr,
            "rlhf_operator_reconciles_total{result=\"error\"}"
        )
        .await,
        0.0
    );
    // A healthy standby is live and ready (so rolling updates proceed); it just does not reconcile.
    assert_eq!(http_get(&standby_addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(&standby_addr, "/readyz").await.unwrap().0, 200);
    wait_until("the standby to log that it stands by", WAIT, || {
        let log = standby.log_text();
        async move { Ok(log.contains("standing by").then_some(())) }
    })
    .await;
    let log = standby.log_text();
    assert!(
        !log.contains("rlhf-operator started") && !log.contains("became leader"),
        "the standby started its controller:\n{log}"
    );

    // SIGKILL the leader: the standby takes over once the Lease expires, not before.
    leader.kill().await;
    let killed = Instant::now();
    wait_for_holder(
        &leases,
        "the standby to take the lease",
        timings.handover_bound() + SLACK,
        |h| holds(h, &standby),
    )
    .await;
    let handover = killed.elapsed();
    let bound = timings.handover_bound();
    assert!(
        handover <= bound + SLACK,
        "handover took {handover:?}, bound {bound:?}"
    );
    let earliest = timings.lease_duration - timings.renew - Duration::from_millis(500);
    assert!(
        handover >= earliest,
        "the standby took a lease that had not expired ({handover:?} < {earliest:?})"
    );
    let lease = leases.get(LEADER_LEASE).await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(1), "{lease:?}");
    let (ok, out) = kubectl_apply(
        &cluster,
        &ns,
        &pipeline_job("second", ["sft", "rm", "ppo"], 1, 1),
    )
    .await;
    assert!(ok, "{out}");
    wait_for_pods(&client, &ns, "second", "sft", 1).await;
    let reconciling = killed.elapsed();
    assert_eq!(sample(&standby_addr, "rlhf_operator_is_leader").await, 1.0);
    eprintln!(
        "leader SIGKILLed: lease taken over after {handover:?} (bound {bound:?}), second job's pods after {reconciling:?}"
    );

    // SIGTERM the new leader: it releases the Lease, so a third replica takes it well within a
    // lease duration, and it exits cleanly.
    let mut third = OperatorProcess::start_with(&cluster.kubeconfig, &ns, &args);
    wait_until("the third operator to stand by", WAIT, || {
        let log = third.log_text();
        async move { Ok(log.contains("standing by").then_some(())) }
    })
    .await;
    terminate(&standby);
    let termed = Instant::now();
    wait_for_holder(
        &leases,
        "the third operator to take the released lease",
        timings.lease_duration,
        |h| holds(h, &third),
    )
    .await;
    let released_after = termed.elapsed();
    assert_eq!(
        wait_for_exit(&mut standby, WAIT).await,
        Some(0),
        "log:\n{}",
        standby.log_text()
    );
    assert!(standby.log_text().contains("released the leader lease"));
    eprintln!("leader SIGTERMed: lease taken over after {released_after:?}");

    // A leader that finds someone else holding its Lease stops at once with a failure code.
    wait_until("the lease to be taken by an intruder", WAIT, || {
        let leases = leases.clone();
        async move {
            let mut lease = leases.get(LEADER_LEASE).await.map_err(|e| e.to_string())?;
            let spec = lease.spec.as_mut().ok_or("no spec")?;
            spec.holder_identity = Some("intruder".into());
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            Ok(leases
                .replace(LEADER_LEASE, &PostParams::default(), &lease)
                .await
                .ok()
                .map(|_| ()))
        }
    })
    .await;
    let code = wait_for_exit(&mut third, timings.renew_deadline() + SLACK).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}; log:\n{}",
        third.log_text()
    );
    assert!(
        third.log_text().contains("lost the lease"),
        "{}",
        third.log_text()
    );
    eprintln!("test took {:?}", started.elapsed());
}
