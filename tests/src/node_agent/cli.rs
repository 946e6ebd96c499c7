//! The agent's command line.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "Test-only kubelet stand-in: fake GPU nodes whose pods run as local processes")]
pub struct Args {
    /// Kubeconfig of the cluster (default: KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Number of nodes: <prefix>-0 .. <prefix>-(N-1).
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Allocatable nvidia.com/gpu per node.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: u32,
    /// Folder for pod logs (logs/), pod folders (pods/) and claims without a hostPath volume (pvc/).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Node name prefix.
    #[arg(long, default_value = "gpu-node")]
    pub prefix: String,
    /// Node label KEY=VALUE (repeatable), e.g. for a test's nodeSelector.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Exit (killing every pod process) when stdin reaches end of file, so that a harness that
    /// dies takes the agent with it.
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_command_line() {
        let args = Args::try_parse_from([
            "rlhf-node-agent",
            "--kubeconfig",
            "/k",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--work-dir",
            "/w",
            "--label",
            "pool=a",
            "--label",
            "x=",
            "--exit-on-stdin-eof",
        ])
        .unwrap();
        assert_eq!(
            (args.nodes, args.gpus_per_node, args.prefix.as_str()),
            (2, 4, "gpu-node")
        );
        assert_eq!(
            args.labels,
            vec![("pool".into(), "a".into()), ("x".into(), String::new())]
        );
        assert!(args.exit_on_stdin_eof);
        assert!(
            Args::try_parse_from(["rlhf-node-agent", "--work-dir", "/w", "--label", "novalue"])
                .is_err()
        );
    }
}
