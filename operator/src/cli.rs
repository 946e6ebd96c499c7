//! Command line of `rlhf-operator`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::{controller, crd, metrics::Metrics, server};

#[derive(Parser, Debug)]
#[command(name = "rlhf-operator", version, about = "Runs RLHFJobs as gangs of trainer pods")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the RLHFJob CustomResourceDefinition (YAML).
    Crd,
    /// Run the controller (kubeconfig from KUBECONFIG, ~/.kube/config, or in-cluster).
    Run {
        /// Address of the /metrics, /healthz and /readyz server.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_addr: String,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
    },
}

pub async fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Run { metrics_addr, namespace } => {
            let metrics = Metrics::new()?;
            let ready = Arc::new(AtomicBool::new(false));
            server::serve(&metrics_addr, metrics.clone(), ready.clone()).await?;
            let client = kube::Client::try_default().await.map_err(|e| Error::Config(e.to_string()))?;
            ready.store(true, Ordering::Relaxed);
            tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), "rlhf-operator started");
            controller::run(client, namespace, metrics).await;
            Ok(())
        }
    }
}
