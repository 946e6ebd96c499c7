//! rlhf-trainer: the program that runs in RLHFJob pods.
pub mod algorithms;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod cuda_memory;
pub mod data;
pub mod distributed;
pub mod error;
pub mod generation;
pub mod inspect;
pub mod local;
pub mod metrics;
pub mod models;
pub mod progress;
pub mod rng;
pub mod stage;
pub mod tokenizer;
