//! Connection to the test control plane, CRD installation and per-test namespaces.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::AsyncWriteExt;

use crate::wait::wait_until;

/// Environment variable naming the kubeconfig of a running test control plane (`make test` sets it).
pub const KUBECONFIG_ENV: &str = "RLHF_TEST_KUBECONFIG";

/// The PodGroup CRDs of the two batch schedulers the operator supports.
pub const POD_GROUP_CRDS: [&str; 2] = [
    "podgroups.scheduling.volcano.sh",
    "podgroups.scheduling.x-k8s.io",
];

#[derive(Clone)]
pub struct TestCluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
}

impl TestCluster {
    /// Connects to the test control plane and makes sure the CRD is installed. The control plane
    /// is the one RLHF_TEST_KUBECONFIG names (`make test` starts one), or else one this harness
    /// starts once under `target/test-controlplane` and leaves running for later test runs
    /// (stop it with `tests/controlplane/down.sh target/test-controlplane`).
    pub async fn connect() -> Self {
        let path = match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) => PathBuf::from(path),
            None => tokio::task::spawn_blocking(shared_control_plane)
                .await
                .expect("starting the control plane")
                .unwrap_or_else(|e| panic!("could not start a test control plane: {e:#}")),
        };
        Self::at(path.clone())
            .await
            .unwrap_or_else(|e| panic!("connecting with {}: {e:#}", path.display()))
    }

    /// Connects with `kubeconfig` and makes sure the CRD is installed.
    pub async fn at(kubeconfig: PathBuf) -> Result<Self> {
        let client = client_for(&kubeconfig).await?;
        let cluster = Self { client, kubeconfig };
        cluster
            .install_crd()
            .await
            .context("installing the RLHFJob CRD")?;
        Ok(cluster)
    }

    /// Installs the committed CRD file the way users do, with plain `kubectl apply -f`.
    async fn install_crd(&self) -> Result<()> {
        let name = rlhf_operator::crd::crd()
            .metadata
            .name
            .context("CRD has a name")?;
        self.apply_crd(&repo_root().join("crds/rlhf.dev_rlhfjobs.yaml"), &name)
            .await
    }

    /// The stand-in CRDs of Volcano's and scheduler-plugins' PodGroups (tests/fixtures/, named
    /// like the real ones; no such scheduler runs here). Cluster-wide; applying again changes nothing.
    pub async fn install_pod_group_crds(&self) -> Result<()> {
        for name in POD_GROUP_CRDS {
            self.apply_crd(
                &repo_root()
                    .join("tests/fixtures")
                    .join(format!("{name}.yaml")),
                name,
            )
            .await?;
        }
        Ok(())
    }

    /// `kubectl apply -f file`, then waits until the API server serves the CRD `name`.
    async fn apply_crd(&self, file: &Path, name: &str) -> Result<()> {
        let file_arg = file.to_string_lossy();
        let (mut ok, mut out) = self.kubectl(&["apply", "-f", &file_arg], "").await;
        if !ok && out.contains("AlreadyExists") {
            // Tests connecting at once raced to create it: apply again, now as an update.
            (ok, out) = self.kubectl(&["apply", "-f", &file_arg], "").await;
        }
        if !ok {
            bail!("kubectl apply -f {}: {out}", file.display());
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        wait_until(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get(name).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await;
        Ok(())
    }

    /// Creates a fresh namespace `<prefix>-<pid>-<n>` so tests never see each other's objects.
    pub async fn namespace(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating a test namespace");
        // Kubernetes 1.20 refuses pods until the namespace's default service account has its token.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_until(
            "the namespace's default service account token",
            Duration::from_secs(30),
            || {
                let accounts = accounts.clone();
                async move {
                    let sa = accounts
                        .get_opt("default")
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(sa
                        .and_then(|sa| sa.secrets)
                        .is_some_and(|s| !s.is_empty())
                        .then_some(()))
                }
            },
        )
        .await;
        name
    }

    /// Runs the real kubectl against the test cluster, feeding `stdin`; returns (success, stdout+stderr).
    pub async fn kubectl(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is installed");
        let mut input = child.stdin.take().expect("piped stdin");
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("writing to kubectl");
        drop(input);
        let out = child.wait_with_output().await.expect("kubectl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl TestCluster {
    /// Writes a kubeconfig at `path` that authenticates as service account `ns/name` with its
    /// token (RBAC then applies exactly as to a pod running as that account).
    pub async fn kubeconfig_for_service_account(
        &self,
        ns: &str,
        name: &str,
        path: &Path,
    ) -> Result<PathBuf> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        // Kubernetes 1.20's token controller creates the token Secret shortly after the account.
        let secret = wait_until(
            &format!("a token for service account {ns}/{name}"),
            Duration::from_secs(30),
            || {
                let (accounts, secrets) = (accounts.clone(), secrets.clone());
                async move {
                    let sa = accounts.get_opt(name).await.map_err(|e| e.to_string())?;
                    let Some(secret) = sa
                        .and_then(|sa| sa.secrets)
                        .and_then(|s| s.first().and_then(|r| r.name.clone()))
                    else {
                        return Ok(None);
                    };
                    secrets.get_opt(&secret).await.map_err(|e| e.to_string())
                }
            },
        )
        .await;
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .context("the token Secret has a token")?;
        let token = String::from_utf8(token.0.clone())?;
        let admin = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut cluster = admin
            .clusters
            .first()
            .context("the admin kubeconfig names a cluster")?
            .clone();
        cluster.name = "test".into();
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": ns}}],
            "current-context": name,
        });
        std::fs::write(path, serde_yaml::to_string(&config)?)?;
        Ok(path.to_path_buf())
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Starts (once; later callers and later test runs reuse it) a control plane under
/// target/test-controlplane. A file lock keeps test binaries running in parallel from racing.
fn shared_control_plane() -> Result<PathBuf> {
    let root = repo_root();
    let dir = root.join("target/test-controlplane");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::create_dir_all(root.join("target"))?;
    let lock = std::fs::File::create(root.join("target/test-controlplane.lock"))?;
    lock.lock()?;
    let alive = kubeconfig.exists()
        && std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !alive {
        let status = std::process::Command::new("bash")
            .arg(root.join("tests/controlplane/up.sh"))
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!(
                "tests/controlplane/up.sh {} failed (is tests/controlplane/install-k8s.sh done?)",
                dir.display()
            );
        }
    }
    Ok(kubeconfig)
}

pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    if !kubeconfig.exists() {
        bail!(
            "{} does not exist (is the control plane up?)",
            kubeconfig.display()
        );
    }
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
