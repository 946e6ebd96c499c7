//! rlhf-operator: reconciles `RLHFJob`s into gangs of trainer pods.
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod server;
pub mod telemetry;
