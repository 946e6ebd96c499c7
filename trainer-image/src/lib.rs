//! rlhf-trainer: the program that runs in RLHFJob pods.
pub mod algorithms;
pub mod batch;
pub mod config;
pub mod data;
pub mod error;
pub mod generation;
pub mod local;
pub mod models;
pub mod rng;
pub mod stage;
pub mod tokenizer;
