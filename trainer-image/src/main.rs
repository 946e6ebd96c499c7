//! rlhf-trainer: the program in the trainer image. This build reads and checks the per-stage
//! config the operator renders; the training commands (`run`, `local`, `logprobs`) arrive with
//! the trainer issue.
use rlhf_trainer::config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "rlhf-trainer", version, about = "RLHF trainer (SFT, reward model, PPO, DPO)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse a stage config (default: $RLHF_CONFIG) and print the resolved plan.
    CheckConfig {
        /// Path of the trainer.json the operator rendered.
        #[arg(env = "RLHF_CONFIG")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { path } => match config::load(&path) {
            Ok(cfg) => {
                println!("{}", config::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rlhf-trainer: {e}");
                // 2 = permanent (bad input): the operator must not retry (ARCHITECTURE.md).
                ExitCode::from(e.exit_code())
            }
        },
    }
}
