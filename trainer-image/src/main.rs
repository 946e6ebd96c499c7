//! rlhf-trainer: the program in the trainer image.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::sync::Arc;

use rlhf_spec::{Offload, TrainerConfig};
use rlhf_trainer::distributed::topology::env_number;
use rlhf_trainer::distributed::{self, Dist, Topology, launch};
use rlhf_trainer::error::{Error, Result};
use rlhf_trainer::local::RunFolder;
use rlhf_trainer::metrics::{TrainerMetrics, serve};
use rlhf_trainer::{allocator, config, inspect, local, stage_runner};
use tch::Device;

#[derive(Parser, Debug)]
#[command(
    name = "rlhf-trainer",
    version,
    about = "RLHF trainer (SFT, reward model, PPO, DPO)"
)]
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
        /// A new run folder for the stage outputs (<output>/<stage>/); default: the first free
        /// rlhf-output/<job>-<n>.
        #[arg(long, conflicts_with = "resume")]
        output: Option<PathBuf>,
        /// Continue the run in this folder: finished stages are skipped, an interrupted one
        /// resumes from its newest checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Print {"tokens": [...], "logprobs": [...]} for a text under a saved model: logprobs[i]
    /// is the log-probability of tokens[i+1] given tokens[0..=i].
    Logprobs {
        /// Hugging Face model folder (config.json, safetensors, tokenizer files).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: String,
        /// Tokenizer folder, or `gpt2` for the builtin GPT-2 tokenizer. Default: the model folder.
        #[arg(long)]
        tokenizer: Option<String>,
    },
    /// Parse a stage config (default: $RLHF_CONFIG) and print the resolved plan.
    CheckConfig {
        #[arg(env = "RLHF_CONFIG")]
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    match execute(Cli::parse().command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rlhf-trainer: {e}");
            // 2 = permanent (bad input): the operator must not retry
            // (docs/ARCHITECTURE.md#exit-codes).
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs the command; returns the process's exit code.
fn execute(command: Command) -> Result<u8> {
    let device = Device::cuda_if_available();
    match command {
        Command::Run { config: path } => {
            launch::die_with_parent();
            let cfg = config::load(&path)?;
            let env: HashMap<String, String> = std::env::vars().collect();
            let topology = Topology::from_env(&env)?;
            let world = cfg.stage.parallelism.world_size() as usize;
            if topology.world != world {
                return Err(Error::invalid(
                    &path,
                    format!(
                        "the stage asks for {world} processes but WORLD_SIZE is {}",
                        topology.world
                    ),
                ));
            }
            if topology.local_world > 1 && std::env::var_os(launch::WORKER_ENV).is_none() {
                let code = launch::run_workers(
                    &topology,
                    &std::env::args_os().skip(1).collect::<Vec<_>>(),
                )?;
                return Ok(u8::try_from(code).unwrap_or(1));
            }
            if topology.is_leader() {
                println!("{}", config::summary(&cfg));
            }
            let metrics_port =
                env_number(&env, "RLHF_METRICS_PORT", usize::from(cfg.metrics_port))?;
            let metrics = start_metrics(&cfg, &topology, metrics_port)?;
            let p = &cfg.stage.parallelism;
            let offload_optimizer = matches!(p.offload, Offload::Optimizer | Offload::All);
            // One GPU per local rank.
            let device = if device.is_cuda() {
                Device::Cuda(topology.local_rank)
            } else {
                device
            };
            let dist = Dist::connect(
                topology,
                p.strategy,
                offload_optimizer,
                device.is_cuda(),
                distributed::TIMEOUT,
            )?;
            stage_runner::run(&cfg, device, Some(metrics), dist).map(|()| 0)
        }
        Command::Local {
            manifest,
            output,
            resume,
        } => {
            let folder = match resume {
                Some(dir) => RunFolder::Resume(dir),
                None => RunFolder::Fresh(output),
            };
            local::run(&manifest, folder).map(|()| 0)
        }
        Command::Logprobs {
            model,
            text,
            tokenizer,
        } => {
            let source = inspect::tokenizer_source(&model, tokenizer.as_deref());
            println!("{}", inspect::logprobs(&model, &source, &text, device)?);
            Ok(0)
        }
        Command::CheckConfig { path } => {
            println!("{}", config::summary(&config::load(&path)?));
            Ok(0)
        }
    }
}

/// Serves this process's metrics on `base` (RLHF_METRICS_PORT, else the config's port) +
/// LOCAL_RANK; base 0 picks a free port.
fn start_metrics(
    cfg: &TrainerConfig,
    topology: &Topology,
    base: usize,
) -> Result<Arc<TrainerMetrics>> {
    let labels = [
        ("rlhf_job", cfg.job.clone()),
        ("namespace", cfg.namespace.clone()),
        ("stage", cfg.stage.name.clone()),
        ("rank", topology.rank.to_string()),
    ];
    let metrics = Arc::new(TrainerMetrics::new(
        labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
    )?);
    let port = if base == 0 {
        0
    } else {
        base + topology.local_rank
    };
    let port = u16::try_from(port)
        .map_err(|_| Error::invalid("$RLHF_METRICS_PORT", format!("{port} is not a port")))?;
    let port = serve(metrics.clone(), port)?;
    println!("rank {}: metrics on :{port}/metrics", topology.rank);
    Ok(metrics)
}
