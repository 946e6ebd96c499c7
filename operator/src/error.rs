//! The operator's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("metrics server on {addr}: {source}")]
    Server {
        addr: String,
        source: std::io::Error,
    },
    #[error("prometheus: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(
        "spec.scheduling.gang: {mode} needs the CRD {crd} ({api_version} PodGroup), which the cluster does not serve; install that scheduler or choose another gang mode"
    )]
    PodGroupCrdMissing {
        mode: &'static str,
        crd: String,
        api_version: String,
    },
    #[error("leader election: {0}")]
    LeaderElection(String),
}

/// Every value `Error::category` returns (the metric starts each at 0, so dashboards have a series).
pub const CATEGORIES: &[&str] = &[
    "forbidden",
    "conflict",
    "api",
    "transport",
    "config",
    "server",
    "metrics",
    "crd_missing",
    "leader_election",
];

impl Error {
    /// Short label for the reconcile-errors metric (one of `CATEGORIES`).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Config(_) => "config",
            Error::Server { .. } => "server",
            Error::Metrics(_) => "metrics",
            Error::PodGroupCrdMissing { .. } => "crd_missing",
            Error::LeaderElection(_) => "leader_election",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
