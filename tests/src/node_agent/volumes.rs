//! A pod's volumes as host folders, and the bind mounts that put them where the container
//! expects them (mounted inside the pod's private mount namespace by process.rs).
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::api::Api;
use kube::{Client, ResourceExt};

/// `source` (a host path) appears at `target` inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything a volume needs from outside the pod.
pub struct VolumeContext<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    /// `<work-dir>/pods/<ns>_<pod>_<uid8>/`
    pub pod_dir: &'a Path,
    pub work_dir: &'a Path,
}

/// Host folders for every mount of `container`, created and filled, with the mount points
/// created on the host too; parents come before children. Errors name the volume.
pub async fn prepare(
    ctx: &VolumeContext<'_>,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<BindMount>, String> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volumeMount {}: no volume of that name", m.name))?;
        let (root, volume_read_only) = source(ctx, volume)
            .await
            .map_err(|e| format!("volume {}: {e}", volume.name))?;
        let mut source = root;
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(sub);
            if !source.exists() {
                mkdir(&source)?;
            }
        }
        let target = PathBuf::from(&m.mount_path);
        if !target.is_absolute() {
            return Err(format!(
                "volumeMount {}: mountPath {} is not absolute",
                m.name, m.mount_path
            ));
        }
        mount_point(&source, &target)?;
        mounts.push(BindMount {
            source,
            target,
            read_only: volume_read_only || m.read_only == Some(true),
        });
    }
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

/// The host folder of one volume and whether it is read-only by nature.
async fn source(ctx: &VolumeContext<'_>, volume: &Volume) -> Result<(PathBuf, bool), String> {
    let dir = ctx.pod_dir.join("volumes").join(&volume.name);
    if let Some(cm) = &volume.config_map {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ctx.namespace);
        let found = api
            .get_opt(&cm.name)
            .await
            .map_err(|e| format!("reading configMap {}: {e}", cm.name))?;
        let files: Vec<(String, Vec<u8>)> = match found {
            Some(cm) => {
                let text = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()));
                text.chain(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect()
            }
            None if cm.optional == Some(true) => Vec::new(),
            None => return Err(format!("configMap {} not found", cm.name)),
        };
        write_files(&dir, files, cm.items.as_deref())?;
        return Ok((dir, true));
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ctx.namespace);
        let found = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading secret {name}: {e}"))?;
        let files = match found {
            Some(s) => s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            None if secret.optional == Some(true) => Vec::new(),
            None => return Err(format!("secret {name} not found")),
        };
        write_files(&dir, files, secret.items.as_deref())?;
        return Ok((dir, true));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let path = claim_path(ctx, &claim.claim_name).await?;
        mkdir(&path)?;
        return Ok((path, claim.read_only == Some(true)));
    }
    if volume.empty_dir.is_some() {
        mkdir(&dir)?;
        return Ok((dir, false));
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if !path.exists()
            && !matches!(
                host.type_.as_deref(),
                Some("File" | "FileOrCreate" | "Socket" | "CharDevice" | "BlockDevice")
            )
        {
            mkdir(&path)?;
        }
        return Ok((path, false));
    }
    Err("only configMap, secret, persistentVolumeClaim, emptyDir and hostPath volumes are supported by rlhf-node-agent".into())
}

/// The bound PersistentVolume's hostPath, else a folder of the agent's own for the claim.
async fn claim_path(ctx: &VolumeContext<'_>, claim: &str) -> Result<PathBuf, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ctx.namespace);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| format!("reading claim {claim}: {e}"))?
        .ok_or_else(|| format!("claim {claim} not found"))?;
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"));
    if let Some(pv_name) = bound {
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let pv = pvs
            .get_opt(&pv_name)
            .await
            .map_err(|e| format!("reading volume {pv_name}: {e}"))?;
        if let Some(host) = pv.and_then(|pv| pv.spec).and_then(|s| s.host_path) {
            return Ok(PathBuf::from(host.path));
        }
    }
    Ok(ctx
        .work_dir
        .join("pvc")
        .join(ctx.namespace)
        .join(pvc.name_any()))
}

/// Writes a configMap/secret's keys as files (only `items`, at their paths, when given).
fn write_files(
    dir: &Path,
    files: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
) -> Result<(), String> {
    mkdir(dir)?;
    let chosen: Vec<(PathBuf, Vec<u8>)> = match items {
        None => files
            .into_iter()
            .map(|(k, v)| (PathBuf::from(k), v))
            .collect(),
        Some(items) => {
            let mut out = Vec::new();
            for item in items {
                let (_, bytes) = files
                    .iter()
                    .find(|(k, _)| *k == item.key)
                    .ok_or_else(|| format!("key {} not found", item.key))?;
                out.push((PathBuf::from(&item.path), bytes.clone()));
            }
            out
        }
    };
    for (rel, bytes) in chosen {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("file name {} leaves the volume", rel.display()));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A bind mount needs a target of the same kind on the host: a folder, or a file for a file.
fn mount_point(source: &Path, target: &Path) -> Result<(), String> {
    if target.exists() {
        return Ok(());
    }
    if source.is_file() {
        if let Some(parent) = target.parent() {
            mkdir(parent)?;
        }
        std::fs::write(target, b"")
            .map_err(|e| format!("creating mount point {}: {e}", target.display()))
    } else {
        mkdir(target)
    }
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_items_and_stay_inside_the_volume() {
        let dir = std::env::temp_dir().join(format!("rlhf-agent-volumes-{}", std::process::id()));
        let files = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ];
        write_files(&dir.join("all"), files.clone(), None).unwrap();
        assert_eq!(std::fs::read(dir.join("all/a")).unwrap(), b"1");
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/renamed".into(),
            ..Default::default()
        }];
        write_files(&dir.join("some"), files.clone(), Some(&items)).unwrap();
        assert_eq!(std::fs::read(dir.join("some/sub/renamed")).unwrap(), b"2");
        assert!(!dir.join("some/a").exists());
        let escape = [KeyToPath {
            key: "a".into(),
            path: "../x".into(),
            ..Default::default()
        }];
        assert!(write_files(&dir.join("bad"), files, Some(&escape)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
