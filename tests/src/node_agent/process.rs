//! A pod's container as a local process group: its own mount and UTS namespaces (via
//! util-linux `unshare`, so no unsafe code) with the volumes and /etc/hosts bind-mounted, the
//! pod's hostname, working directory and environment; and the signals that stop it.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::volumes::BindMount;

/// Runs inside the new namespaces: `hostname`, bind mounts, `cd`, then exec the program.
/// Arguments: HOSTNAME WORKDIR (SOURCE TARGET rw|ro)... -- PROGRAM ARGS...
const SETUP: &str = r#"hostname "$1" || exit 125
wd="$2"; shift 2
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2" || { echo "rlhf-node-agent: cannot mount $1 on $2" >&2; exit 125; }
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 125; fi
  shift 3
done
shift
if [ -n "$wd" ]; then cd "$wd" || { echo "rlhf-node-agent: no working directory $wd" >&2; exit 125; }; fi
exec "$@"
"#;

/// What to run and how.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub hostname: String,
    /// Bind mounts in order (volumes, then the hosts file over /etc/hosts).
    pub mounts: Vec<BindMount>,
    pub log: PathBuf,
}

/// `name` as found on `path` (a PATH value), or itself when it contains a slash.
pub fn resolve_program(name: &str, path: Option<&str>) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The full argument list after `unshare`.
pub fn unshare_args(launch: &Launch) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        SETUP,
        "sh",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(launch.hostname.clone().into());
    args.push(launch.working_dir.clone().unwrap_or_default().into());
    for m in &launch.mounts {
        args.extend([
            m.source.clone().into(),
            m.target.clone().into(),
            OsString::from(if m.read_only { "ro" } else { "rw" }),
        ]);
    }
    args.push("--".into());
    args.push(launch.program.clone().into());
    args.extend(launch.args.iter().map(OsString::from));
    args
}

/// Starts the process as the leader of a new process group (its pid is the group id), with
/// stdout and stderr appended to the log and no stdin.
pub fn spawn(launch: &Launch, unshare: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    Command::new(unshare)
        .args(unshare_args(launch))
        .env_clear()
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
}

/// Sends `signal` to the whole group; false when no process of it is left.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

/// The kubelet's stop: SIGTERM (and SIGCONT, so that stopped processes see it), SIGKILL for
/// the whole group after `grace`, and SIGKILL for anything left once the leader is gone.
pub async fn stop(child: &mut Child, pgid: i32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    signal_group(pgid, Signal::SIGCONT);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    };
    kill_leftovers(pgid).await;
    status
}

/// SIGKILL for what the group's leader left behind (like a container's teardown), then a short
/// wait for it to vanish, so that a pod is reported gone only after its processes are.
pub async fn kill_leftovers(pgid: i32) {
    for _ in 0..20 {
        if !signal_group(pgid, Signal::SIGKILL) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_through_the_given_path() {
        assert_eq!(
            resolve_program("sh", Some("/nonexistent:/bin")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("./x", Some("/bin")),
            Some(PathBuf::from("./x"))
        );
        assert_eq!(
            resolve_program("no-such-program-here", Some("/bin:/usr/bin")),
            None
        );
    }

    #[test]
    fn mounts_and_program_follow_the_setup_script_protocol() {
        let launch = Launch {
            program: "/bin/echo".into(),
            args: vec!["a b".into()],
            env: BTreeMap::new(),
            working_dir: None,
            hostname: "job-0".into(),
            mounts: vec![BindMount {
                source: "/s".into(),
                target: "/t".into(),
                read_only: true,
            }],
            log: "/dev/null".into(),
        };
        let args: Vec<String> = unshare_args(&launch)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let tail = &args[args.iter().position(|a| a == "sh").unwrap() + 1..];
        assert_eq!(
            tail,
            ["job-0", "", "/s", "/t", "ro", "--", "/bin/echo", "a b"]
        );
    }
}
