//! The launcher (torchrun's job): one worker process per local rank, each this same program with
//! RANK and LOCAL_RANK set. SIGTERM and SIGINT are forwarded to the workers; when one worker
//! fails the others are stopped, and the launcher exits with the first failure's code.
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Topology;
use crate::error::{Error, Result};

/// Set in a worker's environment, so it trains instead of launching again.
pub const WORKER_ENV: &str = "RLHF_WORKER";
/// How long stopped workers get to exit before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// Makes the kernel kill this process when the process that started it dies (a killed launcher
/// or `local` must not leave workers training on their own).
pub fn die_with_parent() {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL); // best effort: Linux only
}

/// Exit code of a finished process: its code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn signal_all(children: &[(usize, Child)], signal: Signal) {
    for (_, child) in children {
        let _ = kill(Pid::from_raw(child.id() as i32), signal); // may have exited already
    }
}

/// Runs `args` (this program's own arguments) as `topology.local_world` workers and waits for
/// them; returns the exit code for the launcher.
pub fn run_workers(topology: &Topology, args: &[OsString]) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|source| Error::Read {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::Distributed(format!("cannot handle signals: {e}")))?;
    }
    let mut children = Vec::new();
    for local_rank in 0..topology.local_world {
        let rank = topology.node_rank * topology.local_world + local_rank;
        let child = Command::new(&exe)
            .args(args)
            .env(WORKER_ENV, "1")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("WORLD_SIZE", topology.world.to_string())
            .env("LOCAL_WORLD_SIZE", topology.local_world.to_string())
            .env("MASTER_ADDR", &topology.master_addr)
            .env("MASTER_PORT", topology.master_port.to_string())
            .spawn()
            .map_err(|e| Error::Distributed(format!("cannot start worker {rank}: {e}")))?;
        children.push((rank, child));
    }
    let mut first_failure: Option<i32> = None;
    let mut stopping_since: Option<Instant> = None;
    while !children.is_empty() {
        if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
            signal_all(&children, Signal::SIGTERM);
            stopping_since = Some(Instant::now());
        }
        let mut i = 0;
        while i < children.len() {
            match children[i]
                .1
                .try_wait()
                .map_err(|e| Error::Distributed(format!("waiting for workers: {e}")))?
            {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    let code = exit_code(status);
                    if code != 0 && first_failure.is_none() {
                        eprintln!(
                            "rlhf-trainer: worker {rank} failed with exit code {code}; stopping the others"
                        );
                        first_failure = Some(code);
                        signal_all(&children, Signal::SIGTERM);
                        stopping_since.get_or_insert_with(Instant::now);
                    }
                }
                None => i += 1,
            }
        }
        if stopping_since.is_some_and(|t| t.elapsed() > GRACE) {
            signal_all(&children, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(first_failure.unwrap_or(if stop.load(Ordering::Relaxed) {
        128 + 15
    } else {
        0
    }))
}
