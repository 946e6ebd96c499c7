//! Command line of `rlhf-operator`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use crate::{controller, crd, leader, metrics::Metrics, server};

#[derive(Parser, Debug)]
#[command(
    name = "rlhf-operator",
    version,
    about = "Runs RLHFJobs as gangs of trainer pods"
)]
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
        /// Watch only this namespace; repeat for several (default: all namespaces).
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// Namespace of the leader-election Lease (default: env POD_NAMESPACE). With neither,
        /// leader election is off and this process reconciles at once (run one replica only).
        #[arg(long)]
        leader_election_namespace: Option<String>,
        /// How long the Lease stays valid after its last renewal.
        #[arg(long, default_value_t = leader::LEASE_DURATION.as_secs())]
        lease_duration_seconds: u64,
        /// How often the leader renews the Lease.
        #[arg(long, default_value_t = leader::RENEW_INTERVAL.as_secs())]
        lease_renew_seconds: u64,
    },
}

pub async fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Run {
            metrics_addr,
            namespaces,
            leader_election_namespace,
            lease_duration_seconds,
            lease_renew_seconds,
        } => {
            let timings = leader::Timings::new(lease_duration_seconds, lease_renew_seconds)?;
            let metrics = Metrics::new()?;
            // /healthz answers from here on; /readyz once this replica leads or stands by healthily.
            let ready = Arc::new(AtomicBool::new(false));
            server::serve(&metrics_addr, metrics.clone(), ready.clone()).await?;
            let client = kube::Client::try_default()
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
            let reconcile = {
                let (client, metrics) = (client.clone(), metrics.clone());
                async move {
                    let watched = if namespaces.is_empty() {
                        "<all>".to_string()
                    } else {
                        namespaces.join(",")
                    };
                    tracing::info!(namespace = %watched, "rlhf-operator started");
                    controller::run(client, namespaces, metrics).await;
                }
            };
            let lease_namespace = leader_election_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .filter(|ns| !ns.is_empty());
            let Some(lease_namespace) = lease_namespace else {
                tracing::info!(
                    "leader election off (no --leader-election-namespace, no POD_NAMESPACE): reconciling at once"
                );
                metrics.is_leader.set(1);
                ready.store(true, Ordering::Relaxed);
                reconcile.await;
                return Ok(());
            };
            let elector =
                leader::Elector::new(client, &lease_namespace, leader::identity(), timings);
            leader::lead(elector, &metrics, ready, reconcile).await
        }
    }
}
