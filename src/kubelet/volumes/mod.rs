//! A pod's volumes, as the kubelet's volume manager sets them up before the pod's containers
//! start and keeps them current while they run:
//! - `emptyDir`: a directory of the pod, shared by its containers;
//! - `configMap`, `secret`, `downwardAPI` and `projected` (with service-account tokens, the
//!   cluster CA and the namespace: every pod's `kube-api-access-*`): files computed by
//!   [`content`] and written by [`writer`] the way the kubelet's AtomicWriter does, rewritten
//!   when the objects change and tokens renewed at 80% of their lifetime;
//! - `persistentVolumeClaim` of a bound PV whose `hostPath` or `local` path is a directory of
//!   the lab (what the local-path provisioner makes). A pod's own `hostPath` volumes are
//!   refused before this (see `admission`), and a PV cannot smuggle one in.
//!
//! ConfigMaps and Secrets are read from watch caches ([`Sources`]), falling back to a GET for
//! an object the cache has not seen yet.

pub mod content;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
    Volume,
};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::fsguard::OwnedDir;
use crate::runtime::VolumeMount;
use crate::runtime::process::userns::IdRange;
use content::Objects;

/// A token handed out: (pod uid, audience, expirationSeconds); it maps to the token and when
/// to renew it.
type TokenKey = (String, String, i64);

/// The ConfigMaps and Secrets of the cluster as watched, and the tokens handed out.
pub struct Sources {
    client: kube::Client,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    tokens: Mutex<BTreeMap<TokenKey, (String, Instant)>>,
}

impl Sources {
    /// Start watching ConfigMaps and Secrets.
    pub fn start(client: kube::Client) -> Arc<Sources> {
        fn watch<K>(api: Api<K>) -> Store<K>
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + std::fmt::Debug
                + serde::de::DeserializeOwned
                + Send
                + Sync
                + 'static,
        {
            let (reader, writer) = reflector::store();
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .applied_objects();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while stream.next().await.is_some() {}
            });
            reader
        }
        Arc::new(Sources {
            config_maps: watch(Api::all(client.clone())),
            secrets: watch(Api::all(client.clone())),
            client,
            tokens: Mutex::new(BTreeMap::new()),
        })
    }

    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        if let Some(cm) = self.config_maps.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*cm).clone()));
        }
        Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("get configmap {ns}/{name}: {e}"))
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        if let Some(s) = self.secrets.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*s).clone()));
        }
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| format!("get secret {ns}/{name}: {e}"))
    }

    /// A token of the pod's service account bound to the pod, renewed at 80% of its life.
    async fn token(&self, pod: &Pod, audience: &str, seconds: i64) -> Result<String, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), audience.to_string(), seconds);
        if let Some((token, renew_at)) = self.tokens.lock().expect("tokens").get(&key)
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let account = crate::api::admission::account_name(
            &serde_json::to_value(pod).map_err(|e| e.to_string())?,
        );
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": if audience.is_empty() { serde_json::json!(null) } else { serde_json::json!([audience]) },
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                    "name": pod.metadata.name, "uid": uid},
            }
        });
        let request: TokenRequest = serde_json::from_value(request).map_err(|e| e.to_string())?;
        let answer: TokenRequest = Api::<ServiceAccount>::namespaced(self.client.clone(), &ns)
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("failed to fetch token: {e}"))?;
        let token = answer
            .status
            .map(|s| s.token)
            .ok_or("failed to fetch token: the answer has no token")?;
        let renew_at = Instant::now() + Duration::from_secs((seconds.max(60) as u64) * 8 / 10);
        self.tokens
            .lock()
            .expect("tokens")
            .insert(key, (token.clone(), renew_at));
        Ok(token)
    }

    /// Forget the tokens of a pod that is gone.
    pub fn forget(&self, pod_uid: &str) {
        self.tokens
            .lock()
            .expect("tokens")
            .retain(|(uid, _, _), _| uid != pod_uid);
    }

    /// Everything `pod`'s volumes and environment read. A missing object is left out (the
    /// volume or variable that needs it reports it); an API error is returned.
    pub async fn gather(
        &self,
        pod: &Pod,
        downward: crate::kubelet::env::Downward,
    ) -> Result<Objects, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (maps, secrets) = referenced(pod);
        let mut objects = Objects {
            downward,
            ..Default::default()
        };
        for name in maps {
            if let Some(cm) = self.config_map(&ns, &name).await? {
                objects.config_maps.insert(name, cm);
            }
        }
        for name in secrets {
            if let Some(s) = self.secret(&ns, &name).await? {
                objects.secrets.insert(name, s);
            }
        }
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            for (audience, seconds) in content::tokens_wanted(volume) {
                // A token that cannot be had leaves its volume failing with the reason.
                if let Ok(token) = self.token(pod, &audience, seconds).await {
                    objects.tokens.insert((audience, seconds), token);
                }
            }
        }
        Ok(objects)
    }
}

/// The ConfigMaps and Secrets a pod's volumes and containers' environments name.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut maps = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (maps, secrets);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            maps.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                maps.push(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    let containers: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    for c in containers {
        for from in c.env_from.iter().flatten() {
            maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in c.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                maps.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
            }
        }
    }
    maps.sort();
    maps.dedup();
    secrets.sort();
    secrets.dedup();
    (maps, secrets)
}

/// A volume name safe as a directory name.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

/// Where each of a pod's volumes is on this machine, once set up.
#[derive(Debug, Default, Clone)]
pub struct PodVolumes {
    /// Volume name → its directory, and whether containers may only read it.
    pub dirs: BTreeMap<String, (PathBuf, bool)>,
    /// The files last written to each configMap, secret, downwardAPI or projected volume: a
    /// refresh that computes the same writes nothing and reads nothing from disk.
    written: BTreeMap<String, content::Files>,
}

/// Where a pod's volumes go on this machine, and whose their files are.
pub struct Place<'a> {
    /// The kubelet's pods directory, which every path written is proven to lie in.
    pub owner: &'a OwnedDir,
    /// `<pods>/<uid>`.
    pub pod_dir: &'a Path,
    /// The user namespace the pod's containers run in (`None`: the host's ids).
    pub pod_ids: Option<&'a IdRange>,
    /// The lab's directory: claimed volumes must lie inside it.
    pub lab_root: &'a Path,
}

/// Set up every volume of `pod`, or refresh them (`previous`: what the last set-up made; a
/// bound claim keeps its directory). The error is the kubelet's `FailedMount` message.
pub async fn set_up(
    client: &kube::Client,
    place: &Place<'_>,
    pod: &Pod,
    objects: &Objects,
    previous: &PodVolumes,
) -> Result<PodVolumes, String> {
    let Place {
        owner,
        pod_dir,
        pod_ids,
        lab_root,
    } = *place;
    // Files belong to the container's root, and to the pod's fsGroup when it has one.
    let file_owner = pod_ids.and_then(|ids| {
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.fs_group)
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0);
        Some((ids.host_id(0)?, ids.host_id(fs_group)?))
    });
    let mut out = PodVolumes::default();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if !plain_name(&volume.name) {
            return Err(format!("invalid volume name {:?}", volume.name));
        }
        let failed = |why: String| {
            format!(
                "MountVolume.SetUp failed for volume \"{}\" : {why}",
                volume.name
            )
        };
        let dir = if let Some(plugin) = content::plugin(volume) {
            let files = content::files(volume, pod, objects)
                .expect("a plugin of this module")
                .map_err(failed)?;
            let dir = pod_dir.join("volumes").join(plugin).join(&volume.name);
            if previous.written.get(&volume.name) != Some(&files) {
                writer::write(owner, &dir, &files, file_owner)
                    .map_err(|e| failed(e.to_string()))?;
            }
            out.written.insert(volume.name.clone(), files);
            (dir, true)
        } else if volume.empty_dir.is_some() {
            let dir = pod_dir
                .join("volumes/kubernetes.io~empty-dir")
                .join(&volume.name);
            if !dir.is_dir() {
                owner
                    .create_dir_all(&dir)
                    .and_then(|()| {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    })
                    .map_err(|e| failed(e.to_string()))?;
            }
            (dir, false)
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let dir = match previous.dirs.get(&volume.name) {
                Some((dir, _)) => dir.clone(),
                None => {
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    claimed_dir(client, &ns, &claim.claim_name, lab_root)
                        .await
                        .map_err(failed)?
                }
            };
            (dir, claim.read_only.unwrap_or(false))
        } else {
            // Kinds kemu does not serve (cloud disks, CSI ...): containers that mount them fail.
            continue;
        };
        out.dirs.insert(volume.name.clone(), dir);
    }
    Ok(out)
}

/// The directory of the PV bound to a claim, which must lie inside `allowed` (the lab's
/// directory).
async fn claimed_dir(
    client: &kube::Client,
    ns: &str,
    claim: &str,
    allowed: &Path,
) -> Result<PathBuf, String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
    else {
        return Err(format!("persistentvolumeclaim \"{claim}\" is not bound"));
    };
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| format!("persistentvolume \"{pv_name}\": {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| format!("persistentvolume \"{pv_name}\" has no hostPath or local path"))?;
    let dir = std::fs::canonicalize(&path)
        .map_err(|e| format!("persistentvolume \"{pv_name}\": {path}: {e}"))?;
    let allowed = std::fs::canonicalize(allowed).map_err(|e| e.to_string())?;
    if !dir.starts_with(&allowed) || dir == allowed {
        return Err(format!(
            "persistentvolume \"{pv_name}\": {path} is outside the lab's directory {}; \
             pods mount only volumes the lab provisioned",
            allowed.display()
        ));
    }
    Ok(dir)
}

/// The mounts of one container, from the pod's set-up volumes.
pub fn container_mounts(
    volumes: &PodVolumes,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<VolumeMount>, String> {
    let declared: Vec<&Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .collect();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        if !declared.iter().any(|v| v.name == mount.name) {
            return Err(format!(
                "cannot find volume {:?} to mount into container {:?}",
                mount.name, container.name
            ));
        }
        let Some((dir, forced_read_only)) = volumes.dirs.get(&mount.name) else {
            continue;
        };
        let mut source = dir.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let clean = !sub.starts_with('/') && sub.split('/').all(|p| p != "..");
            if !clean {
                return Err(format!(
                    "invalid subPath {sub:?}: must be a relative path without '..'"
                ));
            }
            source = dir.join(sub);
            if !source.exists() && !forced_read_only {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .create(&source)
                    .map_err(|e| format!("create subPath {sub:?}: {e}"))?;
            }
            // A configMap's key is a link into `..data`: mount what it is now. A link a
            // container planted must not lead out of the volume (CVE-2017-1002101).
            source = std::fs::canonicalize(&source).map_err(|e| format!("subPath {sub:?}: {e}"))?;
            let base = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
            if !source.starts_with(&base) {
                return Err(format!("subPath {sub:?} leads outside the volume"));
            }
        }
        mounts.push(VolumeMount {
            source,
            target: mount.mount_path.clone(),
            read_only: *forced_read_only || mount.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}
