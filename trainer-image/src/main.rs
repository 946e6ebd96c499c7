//! rlhf-trainer: the program in the trainer image.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rlhf_trainer::error::{Error, Result};
use rlhf_trainer::{config, local, stage};
use tch::Device;

#[derive(Parser, Debug)]
#[command(name = "rlhf-trainer", version, about = "RLHF trainer (SFT, reward model, PPO, DPO)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the stage in $RLHF_CONFIG (what the operator's pods do).
    Run {
        /// The trainer.json the operator rendered.
        #[arg(long, env = "RLHF_CONFIG")]
        config: PathBuf,
    },
    /// Run every stage of an RLHFJob manifest on this machine, in dependency order.
    Local {
        /// The RLHFJob YAML.
        manifest: PathBuf,
        /// Where stage outputs go (<output>/local/<job>/<stage>/).
        #[arg(long, default_value = "rlhf-output")]
        output: PathBuf,
    },
    /// Parse a stage config (default: $RLHF_CONFIG) and print the resolved plan.
    CheckConfig {
        #[arg(env = "RLHF_CONFIG")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rlhf-trainer: {e}");
            // 2 = permanent (bad input): the operator must not retry (ARCHITECTURE.md).
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(command: Command) -> Result<()> {
    let device = Device::cuda_if_available();
    match command {
        Command::Run { config: path } => {
            let cfg = config::load(&path)?;
            let world = cfg.stage.parallelism.world_size();
            if world > 1 {
                return Err(Error::invalid(&path, format!("the stage asks for {world} processes; multi-process training is not available yet")));
            }
            println!("{}", config::summary(&cfg));
            stage::run(&cfg, device)
        }
        Command::Local { manifest, output } => local::run(&manifest, &output, device),
        Command::CheckConfig { path } => {
            println!("{}", config::summary(&config::load(&path)?));
            Ok(())
        }
    }
}
