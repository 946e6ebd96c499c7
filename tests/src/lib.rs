//! Test bed for rlhf-operator: a real control plane (started by `tests/controlplane/up.sh`), the
//! operator as a real child process, and the kubelet's part: played through the API (`kubelet`)
//! or by `rlhf-node-agent`, which runs pods as local processes (`node_agent`); and a real
//! Prometheus (`prometheus`).
pub mod chart;
pub mod cluster;
pub mod kubelet;
pub mod node_agent;
pub mod operator;
pub mod prometheus;
pub mod wait;

pub use cluster::TestCluster;
pub use operator::OperatorProcess;
pub use wait::wait_until;
