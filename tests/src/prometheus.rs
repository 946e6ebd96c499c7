//! A real Prometheus (Debian's `prometheus` binary) for tests: started on a free loopback port
//! with a given scrape configuration, queried over its HTTP API (through curl).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::wait::wait_until;

pub struct PrometheusProcess {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrometheusProcess {
    /// Writes `config` (prometheus.yml text) into `dir` and starts Prometheus on it; waits until ready.
    pub async fn start(dir: &Path, config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("prometheus folder");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writing prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("prometheus is installed (scripts/install-deps.sh)");
        let url = format!("http://127.0.0.1:{port}");
        let this = Self { child, url, log };
        let ready = format!("{}/-/ready", this.url);
        wait_until(
            &format!("prometheus to be ready (log {})", this.log.display()),
            Duration::from_secs(30),
            || {
                let ready = ready.clone();
                async move { Ok(curl(&["-sf", &ready]).ok().map(|_| ())) }
            },
        )
        .await;
        this
    }

    /// `query_range` of `expr` over [start, end] (Unix seconds): the result's series.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: &str) -> Result<Vec<Value>> {
        let body = curl(&[
            "-sS",
            "--get",
            &format!("{}/api/v1/query_range", self.url),
            "--data-urlencode",
            &format!("query={expr}"),
            "--data-urlencode",
            &format!("start={start}"),
            "--data-urlencode",
            &format!("end={end}"),
            "--data-urlencode",
            &format!("step={step}"),
        ])?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("prometheus answered {body}"))?;
        if v["status"] != "success" {
            bail!("query {expr}: {}", v["error"]);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Names of the metrics Prometheus has stored.
    pub fn metric_names(&self) -> Result<Vec<String>> {
        let body = curl(&["-sS", &format!("{}/api/v1/label/__name__/values", self.url)])?;
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect())
    }

    /// The scrape targets and their health (`up`), for messages.
    pub fn targets(&self) -> String {
        curl(&["-sS", &format!("{}/api/v1/targets", self.url)]).unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
