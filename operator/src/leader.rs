//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles and a standby takes over when the leader goes.
//!
//! kube 5 has no leader election of its own; this is the client-go scheme reduced to what the
//! operator needs. Every candidate reads the Lease and asks [`decide`] (pure) whether it may take
//! or keep it: when the Lease is absent, has no holder, has expired (`renewTime +
//! leaseDurationSeconds < now`) or is already its own. It then writes the Lease with the
//! `resourceVersion` it read, so of two candidates racing for it one gets 409 Conflict and backs off.
//!
//! The leader renews every `renew` interval and gives up (the process exits) when it has not
//! renewed for [`Timings::renew_deadline`] (two thirds of the lease duration), or sees someone else
//! holding the Lease: it stops before any standby may consider the Lease expired, which leaves a
//! third of the lease duration for clock skew between replicas. On SIGTERM it releases the Lease so
//! a standby takes over at its next retry instead of after the lease duration.
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names;

/// How long a Lease stays valid after its last renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// How often a standby (or a leader whose renewal failed) tries again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: LEASE_DURATION,
            renew: RENEW_INTERVAL,
            retry: RETRY_INTERVAL,
        }
    }
}

impl Timings {
    /// The defaults with the lease duration and renew interval given on the command line.
    pub fn new(lease_duration_seconds: u64, renew_seconds: u64) -> Result<Self> {
        if i32::try_from(lease_duration_seconds).is_err() {
            return Err(Error::LeaderElection(format!(
                "--lease-duration-seconds ({lease_duration_seconds}) is too large"
            )));
        }
        let t = Self {
            lease_duration: Duration::from_secs(lease_duration_seconds),
            renew: Duration::from_secs(renew_seconds),
            ..Self::default()
        };
        if renew_seconds == 0 || t.renew >= t.renew_deadline() {
            return Err(Error::LeaderElection(format!(
                "--lease-renew-seconds ({renew_seconds}) must be at least 1 and less than two thirds of --lease-duration-seconds ({lease_duration_seconds})"
            )));
        }
        Ok(t)
    }

    /// The leader gives up when it has not renewed for this long: two thirds of the lease
    /// duration (client-go's 10 s of 15 s), so it stops well before a standby may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Longest time from the leader's death to a standby holding the Lease: the Lease expires at
    /// most one lease duration after the death, and the standby looks once per retry interval.
    pub fn handover_bound(&self) -> Duration {
        self.lease_duration + self.retry
    }
}

/// What a candidate may do with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Free (absent, no holder, or expired): take it (a new term).
    Take,
    /// Already ours: renew it.
    Keep,
    /// Someone else holds it and it is valid until `expires`.
    Wait { holder: String, expires: Timestamp },
}

/// May `me` take or keep the Lease (`None`: it does not exist) at `now`? A Lease without a
/// duration counts as lasting [`LEASE_DURATION`]; one without a renew time as expired.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = lease else {
        return LeaseAction::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return LeaseAction::Take;
    }
    if holder == me {
        return LeaseAction::Keep;
    }
    let Some(renewed) = &spec.renew_time else {
        return LeaseAction::Take;
    };
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    let expires = renewed
        .0
        .saturating_add(SignedDuration::from_secs(duration))
        .unwrap_or(Timestamp::MAX);
    if expires < now {
        LeaseAction::Take
    } else {
        LeaseAction::Wait {
            holder: holder.to_string(),
            expires,
        }
    }
}

/// The Lease `me` writes to take or renew it at `now`: a new term (acquire time now, one more
/// transition) unless it was already `me`'s.
pub fn claimed(
    prev: Option<&LeaseSpec>,
    me: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let existed = prev.is_some();
    let prev = prev.cloned().unwrap_or_default();
    let ours = prev.holder_identity.as_deref() == Some(me);
    let transitions = prev.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours {
            prev.acquire_time.clone().or(Some(MicroTime(now)))
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || !existed {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..prev
    }
}

/// The Lease as its holder leaves it: no holder and a renew time already a lease duration in the
/// past, so every candidate may take it at once.
pub fn released(prev: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    let duration = prev.lease_duration_seconds.unwrap_or(1).max(1);
    let past = now
        .saturating_sub(SignedDuration::from_secs(i64::from(duration) + 1))
        .unwrap_or(Timestamp::MIN);
    LeaseSpec {
        holder_identity: None,
        renew_time: Some(MicroTime(past)),
        ..prev.clone()
    }
}

/// This replica's name in the Lease: env POD_NAME, else hostname and process id.
pub fn identity() -> String {
    match std::env::var("POD_NAME") {
        Ok(name) if !name.is_empty() => name,
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| names::FIELD_MANAGER.to_string());
            format!("{host}-{}", std::process::id())
        }
    }
}

/// The outcome of one look at the Lease.
#[derive(Debug)]
enum Attempt {
    /// We hold it now (taken or renewed).
    Leading,
    /// Someone else holds it.
    Standby { holder: String },
    /// Someone wrote it between our read and our write.
    Conflict,
}

/// One candidate for the operator's Lease.
pub struct Elector {
    api: Api<Lease>,
    identity: String,
    timings: Timings,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, identity: String, timings: Timings) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            identity,
            timings,
        }
    }

    /// Reads the Lease and takes or renews it when [`decide`] allows.
    async fn attempt(&self) -> Result<Attempt> {
        let current = self.api.get_opt(names::LEADER_LEASE).await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        if let LeaseAction::Wait { holder, .. } = decide(spec, &self.identity, now) {
            return Ok(Attempt::Standby { holder });
        }
        let spec = claimed(spec, &self.identity, self.timings.lease_duration, now);
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(names::LEADER_LEASE.into()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Replace with the resourceVersion we read: a concurrent writer makes this a 409.
                lease.metadata.managed_fields = None;
                lease.spec = Some(spec);
                self.api
                    .replace(names::LEADER_LEASE, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Tries every retry interval until this replica holds the Lease; returns when the winning
    /// attempt started (the Lease's renew time is no earlier). `ready` tells whether the last
    /// attempt reached the API server.
    async fn acquire(&self, ready: &AtomicBool) -> Instant {
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            match self.attempt().await {
                Ok(Attempt::Leading) => return started,
                Ok(Attempt::Standby { holder }) => {
                    ready.store(true, Ordering::Relaxed);
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(holder = %holder, identity = %self.identity, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {
                    ready.store(true, Ordering::Relaxed);
                    tracing::debug!("another replica wrote the lease first; backing off");
                }
                Err(e) => {
                    ready.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot read or write the leader lease; retrying");
                }
            }
            tokio::time::sleep(self.timings.retry).await;
        }
    }

    /// Renews until leadership is lost, then returns why. `renewed` is when the last successful
    /// write started.
    async fn keep(&self, mut renewed: Instant, ready: &AtomicBool) -> Error {
        let deadline = self.timings.renew_deadline();
        let mut wait = self.timings.renew;
        loop {
            tokio::time::sleep(wait.min(deadline.saturating_sub(renewed.elapsed()))).await;
            let started = Instant::now();
            let left = deadline.saturating_sub(renewed.elapsed());
            let outcome = tokio::time::timeout(left, self.attempt()).await;
            wait = self.timings.retry;
            match outcome {
                Ok(Ok(Attempt::Leading)) => {
                    renewed = started;
                    wait = self.timings.renew;
                    ready.store(true, Ordering::Relaxed);
                }
                Ok(Ok(Attempt::Standby { holder })) => {
                    return Error::LeaderElection(format!(
                        "lost the lease: {holder} holds it now; exiting so that only one replica reconciles"
                    ));
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::warn!("the leader lease changed while renewing it; retrying")
                }
                Ok(Err(e)) => {
                    ready.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot renew the leader lease; retrying");
                }
                Err(_) => {}
            }
            if renewed.elapsed() >= deadline {
                return Error::LeaderElection(format!(
                    "could not renew the lease for {deadline:?}; exiting before a standby may take it over"
                ));
            }
        }
    }

    /// Gives the Lease up if it is still ours (best effort: otherwise it expires).
    async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(names::LEADER_LEASE).await? else {
                return Ok(false);
            };
            let Some(spec) = lease
                .spec
                .as_ref()
                .filter(|s| s.holder_identity.as_deref() == Some(self.identity.as_str()))
            else {
                return Ok(false);
            };
            lease.spec = Some(released(spec, Timestamp::now()));
            lease.metadata.managed_fields = None;
            self.api
                .replace(names::LEADER_LEASE, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match result.await {
            Ok(true) => tracing::info!("released the leader lease"),
            Ok(false) => tracing::info!("the leader lease is no longer ours; nothing to release"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader lease; it expires on its own")
            }
        }
    }
}

/// Runs `work` (the controller) only while this replica holds the Lease: waits for it (returning
/// Ok on SIGTERM or Ctrl-C meanwhile), runs `work` while renewing, and releases the Lease when
/// `work` returns. Losing the Lease drops `work` at once and returns the error (the process must
/// exit: it cannot know what the new leader has done since).
pub async fn lead<F: Future<Output = ()>>(
    elector: Elector,
    metrics: &Metrics,
    ready: Arc<AtomicBool>,
    work: F,
) -> Result<()> {
    let lease = format!(
        "{}/{}",
        elector.api.namespace().unwrap_or_default(),
        names::LEADER_LEASE
    );
    tracing::info!(lease = %lease, identity = %elector.identity, duration = ?elector.timings.lease_duration, renew = ?elector.timings.renew, "leader election on: waiting for the lease");
    metrics.is_leader.set(0);
    let renewed = tokio::select! {
        renewed = elector.acquire(&ready) => renewed,
        () = shutdown_signal() => {
            tracing::info!("shutting down before becoming leader");
            return Ok(());
        }
    };
    tracing::info!(lease = %lease, identity = %elector.identity, "became leader");
    metrics.is_leader.set(1);
    ready.store(true, Ordering::Relaxed);
    let lost = tokio::select! {
        () = work => None,
        e = elector.keep(renewed, &ready) => Some(e),
    };
    metrics.is_leader.set(0);
    match lost {
        Some(e) => {
            ready.store(false, Ordering::Relaxed);
            Err(e)
        }
        None => {
            elector.release().await;
            Ok(())
        }
    }
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn absent_or_unheld_lease_is_taken() {
        assert_eq!(decide(None, "me", at(0)), LeaseAction::Take);
        let mut spec = held("", 0, 15);
        assert_eq!(decide(Some(&spec), "me", at(1)), LeaseAction::Take);
        spec.holder_identity = None;
        assert_eq!(decide(Some(&spec), "me", at(1)), LeaseAction::Take);
    }

    #[test]
    fn expired_lease_of_another_is_taken() {
        assert_eq!(
            decide(Some(&held("other", 0, 15)), "me", at(16)),
            LeaseAction::Take
        );
        let no_renew = LeaseSpec {
            renew_time: None,
            ..held("other", 0, 15)
        };
        assert_eq!(decide(Some(&no_renew), "me", at(0)), LeaseAction::Take);
    }

    #[test]
    fn fresh_lease_of_another_is_waited_for() {
        let expires = at(15);
        assert_eq!(
            decide(Some(&held("other", 0, 15)), "me", at(5)),
            LeaseAction::Wait {
                holder: "other".into(),
                expires
            }
        );
        // Without a duration the default applies.
        let no_duration = LeaseSpec {
            lease_duration_seconds: None,
            ..held("other", 0, 15)
        };
        assert_eq!(
            decide(Some(&no_duration), "me", at(14)),
            LeaseAction::Wait {
                holder: "other".into(),
                expires
            }
        );
    }

    #[test]
    fn own_lease_is_kept_even_when_expired() {
        assert_eq!(
            decide(Some(&held("me", 0, 15)), "me", at(5)),
            LeaseAction::Keep
        );
        assert_eq!(
            decide(Some(&held("me", 0, 15)), "me", at(100)),
            LeaseAction::Keep
        );
    }

    #[test]
    fn lease_expires_only_strictly_after_renew_plus_duration() {
        let spec = held("other", 0, 15);
        assert!(matches!(
            decide(Some(&spec), "me", at(15)),
            LeaseAction::Wait { .. }
        ));
        let just_after = at(15).checked_add(SignedDuration::from_micros(1)).unwrap();
        assert_eq!(decide(Some(&spec), "me", just_after), LeaseAction::Take);
        let just_before = at(15).checked_sub(SignedDuration::from_micros(1)).unwrap();
        assert!(matches!(
            decide(Some(&spec), "me", just_before),
            LeaseAction::Wait { .. }
        ));
    }

    #[test]
    fn claiming_starts_a_term_unless_renewing() {
        let taken = claimed(
            Some(&held("other", 0, 15)),
            "me",
            Duration::from_secs(6),
            at(20),
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_duration_seconds, Some(6));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(20))));
        assert_eq!(taken.lease_transitions, Some(4));

        let renewed = claimed(
            Some(&held("me", 0, 15)),
            "me",
            Duration::from_secs(15),
            at(5),
        );
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(renewed.lease_transitions, Some(3));

        let first = claimed(None, "me", Duration::from_secs(15), at(0));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.acquire_time, Some(MicroTime(at(0))));
    }

    #[test]
    fn released_lease_is_free_for_everyone_at_once() {
        let spec = released(&held("me", 10, 15), at(11));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(decide(Some(&spec), "other", at(11)), LeaseAction::Take);
        // Even a reader that ignores the empty holder sees it expired.
        let named = LeaseSpec {
            holder_identity: Some("me".into()),
            ..spec
        };
        assert_eq!(decide(Some(&named), "other", at(11)), LeaseAction::Take);
        // ... and taking it over counts a transition.
        assert_eq!(
            claimed(
                Some(&released(&held("me", 10, 15), at(11))),
                "other",
                LEASE_DURATION,
                at(12)
            )
            .lease_transitions,
            Some(4)
        );
    }

    #[test]
    fn timings_keep_the_renew_deadline_inside_the_lease() {
        let t = Timings::default();
        assert_eq!(t.renew_deadline(), Duration::from_secs(10));
        assert_eq!(t.handover_bound(), Duration::from_secs(17));
        assert!(Timings::new(6, 2).is_ok());
        assert!(Timings::new(15, 10).is_err());
        assert!(Timings::new(15, 0).is_err());
        assert!(Timings::new(u64::MAX / 2, 1).is_err());
    }
}
