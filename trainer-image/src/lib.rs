//! rlhf-trainer: the program that runs in RLHFJob pods.
pub mod config;
pub mod error;
pub mod models;
