//! rlhf-node-agent: a test-only stand-in for the kubelet that runs each pod's container command
//! as local processes (see rlhf_test_support::node_agent).
use clap::Parser;
use rlhf_test_support::node_agent::{agent, cli::Args};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let code = match agent::run(args).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("rlhf-node-agent: {e:#}");
            1
        }
    };
    // Exit now: the stdin watcher thread may still be blocked in read().
    std::process::exit(code);
}
