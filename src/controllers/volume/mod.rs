//! The persistent volume controller and kemu's local-path provisioner, in one loop:
//!
//! - A claim without a volume binds to a fitting Available volume ([`plan::pick_volume`]); the
//!   volume gets the claim's reference (`claimRef`) and phase Bound, the claim gets
//!   `volumeName`, kube's binding annotations and phase Bound.
//! - Otherwise, if its class's provisioner is `kemu.io/local-path` and the controller manager
//!   was given a root directory, a volume is made for it: a directory under the root, a
//!   PersistentVolume `pvc-<claim uid>` with a `hostPath` pointing there and (for
//!   `WaitForFirstConsumer` classes, once a pod using the claim is on a node) node affinity to
//!   that node's `kubernetes.io/hostname`. The kubelet mounts it; all nodes share the host's
//!   filesystem, so the affinity records where the first consumer ran rather than where the
//!   data could be.
//! - A volume whose claim is gone is Released; with `persistentVolumeReclaimPolicy: Delete`
//!   and provisioned here, its directory (proved to lie inside the root) and the volume are
//!   deleted.

pub mod plan;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use crate::events::{Recorder, reference};
use crate::fsguard::OwnedDir;

const COMPONENT: &str = "persistentvolume-controller";

/// One object to look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Claim(Key),
    Volume(String),
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Claim(k) => write!(f, "claim {k}"),
            Item::Volume(n) => write!(f, "volume {n}"),
        }
    }
}

/// The claims a pod uses.
fn claims_of(pod: &Pod) -> Vec<Key> {
    let ns = pod.namespace().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| Key::new(ns.clone(), c.claim_name.clone()))
        .collect()
}

struct Controller {
    shared: Arc<Shared>,
    recorder: Recorder,
    provisioner: Recorder,
    root: Option<OwnedDir>,
}

/// Register the handlers now; the future binds and provisions forever once the caches are
/// synced. `root` is where provisioned volumes live.
pub fn run(shared: Arc<Shared>, root: Option<PathBuf>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue<Item> = WorkQueue::new();
    {
        let q = queue.clone();
        shared.pvcs.on_change(move |change| match change {
            Change::Applied { new, .. } => q.add(Item::Claim(Key::of(*new))),
            Change::Deleted(old) => {
                if let Some(v) = old.spec.as_ref().and_then(|s| s.volume_name.clone()) {
                    q.add(Item::Volume(v));
                }
            }
        });
    }
    {
        let q = queue.clone();
        let claims = shared.pvcs.clone();
        shared.pvs.on_change(move |change| match change {
            Change::Applied { new, .. } => {
                q.add(Item::Volume(new.name_any()));
                // A new volume may fit a claim that waits.
                if new.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) {
                    for c in claims.list() {
                        if c.spec.as_ref().is_none_or(|s| s.volume_name.is_none()) {
                            q.add(Item::Claim(Key::of(c.as_ref())));
                        }
                    }
                }
            }
            Change::Deleted(_) => {}
        });
    }
    {
        // A pod on a node is the first consumer its claims wait for.
        let q = queue.clone();
        shared.pods.on_change(move |change| {
            if let Change::Applied { old, new } = change {
                let placed = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                if placed(new) && old.is_none_or(|o| !placed(o)) {
                    for c in claims_of(new) {
                        q.add(Item::Claim(c));
                    }
                }
            }
        });
    }
    {
        let q = queue.clone();
        let claims = shared.pvcs.clone();
        shared.storageclasses.on_change(move |change| {
            if let Change::Applied { .. } = change {
                for c in claims.list() {
                    q.add(Item::Claim(Key::of(c.as_ref())));
                }
            }
        });
    }
    async move {
        shared.synced().await;
        let root = match root.map(OwnedDir::new) {
            None => None,
            Some(Ok(dir)) => Some(dir),
            Some(Err(e)) => {
                tracing::error!("local-path root: {e}; no volumes will be provisioned");
                None
            }
        };
        let controller = Arc::new(Controller {
            recorder: Recorder::new(shared.client.clone(), COMPONENT, None),
            provisioner: Recorder::new(
                shared.client.clone(),
                &format!("{}_{}", plan::PROVISIONER, "kemu"),
                None,
            ),
            shared,
            root,
        });
        run_worker(COMPONENT, queue, move |item| {
            let c = controller.clone();
            async move {
                match &item {
                    Item::Claim(k) => c.sync_claim(k).await,
                    Item::Volume(n) => c.sync_volume(n).await,
                }
            }
        })
        .await;
    }
}

impl Controller {
    async fn sync_claim(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(claim) = self.shared.pvcs.get(key) else {
            return Ok(None);
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.shared.client.clone(), &key.namespace);
        if let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) {
            // Bound on our side; finish the claim's status if the volume agrees.
            let Some(pv) = self.shared.pvs.get(&Key::new("", volume.clone())) else {
                return Ok(None);
            };
            let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase != Some("Bound") {
                self.claim_bound(&claims, &claim, &pv).await?;
            }
            return Ok(None);
        }
        let volumes = self.shared.pvs.list();
        let refs: Vec<&PersistentVolume> = volumes.iter().map(|v| v.as_ref()).collect();
        if let Some(pv) = plan::pick_volume(&claim, &refs) {
            return self.bind(&claims, &claim, pv).await.map(|_| None);
        }
        let class_name = plan::claim_class(&claim);
        let claim_ref = reference(claim.as_ref());
        if class_name.is_empty() {
            self.recorder.normal(
                &claim_ref,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            );
            return Ok(None);
        }
        let Some(class) = self
            .shared
            .storageclasses
            .get(&Key::new("", class_name.clone()))
        else {
            self.recorder.warning(
                &claim_ref,
                "ProvisioningFailed",
                format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
            );
            return Ok(None);
        };
        if class.provisioner != plan::PROVISIONER {
            self.recorder.normal(
                &claim_ref,
                "ExternalProvisioning",
                format!(
                    "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                    class.provisioner
                ),
            );
            return Ok(None);
        }
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let wait = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
        let node = if wait {
            let consumer = self
                .shared
                .pods
                .list_namespace(&key.namespace)
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| claims_of(p).contains(key))
                .find_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
            match consumer {
                Some(n) => Some(n),
                None => {
                    self.recorder.normal(
                        &claim_ref,
                        "WaitForFirstConsumer",
                        "waiting for first consumer to be created before binding".into(),
                    );
                    return Ok(None);
                }
            }
        } else {
            None
        };
        let hostname = node.as_ref().map(|n| {
            self.shared
                .nodes
                .get(&Key::new("", n.clone()))
                .and_then(|node| {
                    node.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/hostname").cloned())
                })
                .unwrap_or_else(|| n.clone())
        });

        // Provision.
        self.provisioner.normal(
            &claim_ref,
            "Provisioning",
            format!("External provisioner is provisioning volume for claim \"{key}\""),
        );
        let dir = plan::volume_dir(root.root(), &claim);
        root.create_dir_all(&dir)?;
        // Containers run as any user: the directory is everyone's, as local-path makes it.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let pv = plan::provisioned_volume(&claim, &class, &dir, hostname.as_deref());
        let pvs: Api<PersistentVolume> = Api::all(self.shared.client.clone());
        let created = match pvs.create(&PostParams::default(), &pv).await {
            Ok(created) => created,
            Err(kube::Error::Api(s)) if s.code == 409 => match pvs.get(&pv.name_any()).await {
                Ok(existing) => existing,
                Err(e) => anyhow::bail!("get volume {}: {e}", pv.name_any()),
            },
            Err(e) => {
                self.provisioner.warning(
                    &claim_ref,
                    "ProvisioningFailed",
                    format!("failed to provision volume with StorageClass \"{class_name}\": {e}"),
                );
                anyhow::bail!("create volume {}: {e}", pv.name_any());
            }
        };
        self.shared.pvs.observe(created.clone());
        tracing::info!(claim = %key, volume = %created.name_any(), dir = %dir.display(), "provisioned");
        self.provisioner.normal(
            &claim_ref,
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {}", created.name_any()),
        );
        // The claim records where and by whom it was provisioned.
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            "volume.kubernetes.io/storage-provisioner".into(),
            plan::PROVISIONER.into(),
        );
        annotations.insert(
            "volume.beta.kubernetes.io/storage-provisioner".into(),
            plan::PROVISIONER.into(),
        );
        if let Some(n) = &node {
            annotations.insert(plan::SELECTED_NODE.into(), n.clone().into());
        }
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        let claim = match claims
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => anyhow::bail!("annotate claim {key}: {e}"),
        };
        self.bind(&claims, &claim, &created).await?;
        Ok(None)
    }

    /// Bind `claim` and `pv` to each other: the volume first (its claimRef and phase), then the
    /// claim (its volumeName, annotations and phase).
    async fn bind(
        &self,
        claims: &Api<PersistentVolumeClaim>,
        claim: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> anyhow::Result<()> {
        let pvs: Api<PersistentVolume> = Api::all(self.shared.client.clone());
        let name = pv.name_any();
        let bound_here = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid == claim.metadata.uid);
        let pv = if bound_here {
            pv.clone()
        } else {
            let patch = serde_json::json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
                "spec": {"claimRef": plan::claim_ref(claim)}});
            match pvs
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(p) => p,
                Err(e) => anyhow::bail!("bind volume {name}: {e}"),
            }
        };
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            let patch = serde_json::json!({"status": {"phase": "Bound"}});
            let updated = pvs
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            self.shared.pvs.observe(updated);
        }
        let claim_name = claim.name_any();
        let patch = serde_json::json!({
            "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"volumeName": name}});
        let claim = match claims
            .patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(c) => c,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => anyhow::bail!("bind claim {claim_name}: {e}"),
        };
        self.claim_bound(claims, &claim, &pv).await
    }

    async fn claim_bound(
        &self,
        claims: &Api<PersistentVolumeClaim>,
        claim: &PersistentVolumeClaim,
        pv: &PersistentVolume,
    ) -> anyhow::Result<()> {
        let spec = pv.spec.clone().unwrap_or_default();
        let patch = serde_json::json!({"status": {"phase": "Bound",
            "accessModes": spec.access_modes, "capacity": spec.capacity}});
        match claims
            .patch_status(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(c) => {
                self.shared.pvcs.observe(c);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("claim {} bound: {e}", claim.name_any()),
        }
    }

    async fn sync_volume(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(pv) = self.shared.pvs.get(&Key::new("", name)) else {
            return Ok(None);
        };
        if pv.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let pvs: Api<PersistentVolume> = Api::all(self.shared.client.clone());
        let phase = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let set_phase = |p: &'static str| {
            let pvs = pvs.clone();
            async move {
                let patch = serde_json::json!({"status": {"phase": p}});
                match pvs
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(updated) => {
                        self.shared.pvs.observe(updated);
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(anyhow::anyhow!("phase of volume {name}: {e}")),
                }
            }
        };
        let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            if phase != "Available" {
                set_phase("Available").await?;
            }
            return Ok(None);
        };
        let ns = r.namespace.clone().unwrap_or_default();
        let claim_name = r.name.clone().unwrap_or_default();
        // The cache may not show a claim just made: ask before releasing anything.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.shared.client.clone(), &ns);
        let claim = match self
            .shared
            .pvcs
            .get(&Key::new(ns.clone(), claim_name.clone()))
        {
            Some(c) => Some((*c).clone()),
            None => claims.get_opt(&claim_name).await?,
        };
        let same = |c: &PersistentVolumeClaim| {
            r.uid
                .as_ref()
                .is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_ref())
        };
        match claim {
            Some(c) if same(&c) => {
                let ours = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(name);
                if ours && phase != "Bound" {
                    set_phase("Bound").await?;
                }
                Ok(None)
            }
            _ => {
                if phase != "Released" {
                    set_phase("Released").await?;
                }
                let policy = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
                    .unwrap_or("Retain");
                let ours = pv
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(plan::PROVISIONED_BY))
                    .is_some_and(|p| p == plan::PROVISIONER);
                if policy == "Delete" && ours {
                    self.reclaim(&pvs, &pv).await?;
                }
                Ok(None)
            }
        }
    }

    /// Delete a provisioned volume's directory and the volume.
    async fn reclaim(
        &self,
        pvs: &Api<PersistentVolume>,
        pv: &PersistentVolume,
    ) -> anyhow::Result<()> {
        let name = pv.name_any();
        if let (Some(root), Some(path)) = (
            &self.root,
            pv.spec
                .as_ref()
                .and_then(|s| s.host_path.as_ref())
                .map(|h| PathBuf::from(&h.path)),
        ) {
            // Only a directory inside the root, named as this provisioner names them.
            let file_name = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            if path.parent() == Some(root.root()) && file_name.starts_with(&format!("{name}_")) {
                match root.remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => anyhow::bail!("remove {}: {e}", path.display()),
                }
            } else {
                tracing::warn!(volume = %name, path = %path.display(), "not a directory of this provisioner: left alone");
            }
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pvs.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(volume = %name, "reclaimed (deleted)");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => anyhow::bail!("delete volume {name}: {e}"),
        }
    }
}
