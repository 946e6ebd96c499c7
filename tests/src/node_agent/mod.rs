//! rlhf-node-agent: the kubelet's part for tests, with real processes. It registers GPU Nodes,
//! and runs each pod that the real scheduler binds to them as a local process group: volumes
//! and a generated /etc/hosts bind-mounted in a private mount namespace, a loopback address per
//! pod (derived from its name), ports remapped so that pods sharing this machine do not clash,
//! and the status a kubelet would report. Deleting a pod stops its processes.
//!
//! Modules, one job each: `cli` (flags), `agent` (the loop over Nodes and pods), `pod` (one
//! pod's life), `hosts` (addresses and DNS names), `env`, `ports`, `volumes`, `process`
//! (namespaces, spawning, signals), `status` (what is reported), `harness` (for tests).
pub mod agent;
pub mod cli;
pub mod env;
pub mod harness;
pub mod hosts;
pub mod pod;
pub mod ports;
pub mod process;
pub mod status;
pub mod volumes;

pub use harness::{NodeAgentProcess, newest_pod_dir, pod_log, pod_ports, pod_process};
pub use hosts::pod_ip;
pub use ports::{Forward, PortsRecord, Remapped};
