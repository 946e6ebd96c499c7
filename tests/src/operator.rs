//! The operator as a real child process (the release binary), so tests can kill it mid-flight.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::{Child, Command};

pub struct OperatorProcess {
    child: Child,
    pub log: PathBuf,
}

/// `target/<profile>/<name>`: next to the calling binary, or above a test binary's `deps/` folder.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    let mut dir = exe.parent().expect("target/<profile>/[deps/]<binary>");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>/deps");
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release --bins`; make test does)",
        bin.display()
    );
    bin
}

impl OperatorProcess {
    /// Starts `rlhf-operator run` watching only `namespace`, logging to a file named after it.
    pub fn start(kubeconfig: &Path, namespace: &str) -> Self {
        Self::spawn(
            kubeconfig,
            namespace,
            &[],
            std::env::temp_dir().join(format!("rlhf-operator-{namespace}.log")),
        )
    }

    /// As `start`, with `extra_args` after the usual ones (e.g. leader election settings) and a
    /// log file of its own, so several operators can watch one namespace.
    pub fn start_with(kubeconfig: &Path, namespace: &str, extra_args: &[&str]) -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        Self::spawn(
            kubeconfig,
            namespace,
            extra_args,
            std::env::temp_dir().join(format!("rlhf-operator-{namespace}-{n}.log")),
        )
    }

    fn spawn(kubeconfig: &Path, namespace: &str, extra_args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("operator log file");
        let child = Command::new(workspace_binary("rlhf-operator"))
            .args([
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--namespace",
                namespace,
            ])
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            // Leader election only where a test asks for it, and distinct identities (hostname + pid).
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env("RUST_LOG", "info,rlhf_operator=debug")
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("starting rlhf-operator");
        Self { child, log }
    }

    /// SIGKILL: no chance to finish anything, like a node failure or an OOM kill.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The process id while it runs (for reading /proc/<pid>/status).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address its metrics server reports it listens on (from its log), once it does.
    pub fn metrics_addr(&self) -> Option<String> {
        let text = strip_ansi(&self.log_text());
        let line = text
            .lines()
            .find(|l| l.contains("metrics and health server listening"))?;
        let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
        Some(addr.to_string())
    }

    /// Whether the process still runs (false once it has exited, e.g. crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit code once the process has exited (None while it runs or if a signal ended it).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|status| status.code())
    }
}

/// Text without terminal colour sequences (ESC [ ... m).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
