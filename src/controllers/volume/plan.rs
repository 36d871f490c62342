//! The pure part of the volume controllers: which PersistentVolume a claim binds to (kube's
//! `findMatchingVolume`: same class, same mode, every access mode, enough capacity, the
//! smallest that fits; a volume pre-bound to the claim first), and the volume the local-path
//! provisioner makes for a claim (a host directory under the provisioner's root, with node
//! affinity to the node of the claim's first consumer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The provisioner name of kemu's local-path provisioner.
pub const PROVISIONER: &str = "kemu.io/local-path";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// A quantity in its base unit (bytes for storage), `None` if it does not parse.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * scale)
}

fn storage(map: Option<&BTreeMap<String, Quantity>>) -> Option<f64> {
    quantity(&map?.get("storage")?.0)
}

/// The class a claim asks for (`""`: none).
pub fn claim_class(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| {
            claim
                .metadata
                .annotations
                .as_ref()?
                .get("volume.beta.kubernetes.io/storage-class")
                .cloned()
        })
        .unwrap_or_default()
}

fn volume_class(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

fn refers_to(r: &ObjectReference, claim: &PersistentVolumeClaim) -> bool {
    r.namespace == claim.metadata.namespace
        && r.name == claim.metadata.name
        && r.uid
            .as_ref()
            .is_none_or(|u| u.is_empty() || Some(u) == claim.metadata.uid.as_ref())
}

/// The volume `claim` binds to, if one fits.
pub fn pick_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &[&'a PersistentVolume],
) -> Option<&'a PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let class = claim_class(claim);
    let wanted = storage(spec.resources.as_ref()?.requests.as_ref()).unwrap_or(0.0);
    let modes = spec.access_modes.clone().unwrap_or_default();
    let mode = spec
        .volume_mode
        .clone()
        .unwrap_or_else(|| "Filesystem".into());
    let fits = |pv: &PersistentVolume| {
        let Some(s) = pv.spec.as_ref() else {
            return false;
        };
        volume_class(pv) == class
            && s.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()) == mode
            && modes
                .iter()
                .all(|m| s.access_modes.iter().flatten().any(|x| x == m))
            && storage(s.capacity.as_ref()).unwrap_or(0.0) >= wanted
            && pv.metadata.deletion_timestamp.is_none()
    };
    // A volume pre-bound to this claim wins.
    if let Some(pv) = volumes.iter().find(|pv| {
        pv.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| refers_to(r, claim))
    }) {
        return fits(pv).then_some(*pv);
    }
    volumes
        .iter()
        .copied()
        .filter(|pv| pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()))
        .filter(|pv| fits(pv))
        .min_by(|a, b| {
            let size = |pv: &PersistentVolume| {
                storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref())).unwrap_or(0.0)
            };
            size(a)
                .partial_cmp(&size(b))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

/// A reference from a volume to its claim.
pub fn claim_ref(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The name of a provisioned volume: `pvc-<claim uid>`, as external provisioners name them.
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default())
}

/// The directory of a provisioned volume under `root`: `<volume>_<namespace>_<claim>`, as
/// rancher's local-path provisioner names it.
pub fn volume_dir(root: &Path, claim: &PersistentVolumeClaim) -> PathBuf {
    root.join(format!(
        "{}_{}_{}",
        volume_name(claim),
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// The volume the provisioner makes for `claim` of `class`, its directory at `dir`, pinned to
/// the node whose `kubernetes.io/hostname` label is `hostname` (none for `Immediate` classes).
pub fn provisioned_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    dir: &Path,
    hostname: Option<&str>,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    let node_affinity = hostname.map(|h| VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "kubernetes.io/hostname".into(),
                    operator: "In".into(),
                    values: Some(vec![h.to_string()]),
                }]),
                match_fields: None,
            }],
        }),
    });
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(claim)),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), capacity)])),
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(claim_ref(claim)),
            node_affinity,
            ..Default::default()
        }),
        status: None,
    }
}

/// The default class among `classes` (the newest of those marked, as the admission plugin
/// picks it).
pub fn default_class<'a>(classes: &[&'a StorageClass]) -> Option<&'a StorageClass> {
    classes
        .iter()
        .copied()
        .filter(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS))
                .is_some_and(|v| v == "true")
        })
        .max_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(class: Option<&str>, size: &str, modes: &[&str]) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": "data-web-0", "namespace": "default", "uid": "u1"},
            "spec": {"storageClassName": class, "accessModes": modes,
                "resources": {"requests": {"storage": size}}}}),
        )
        .unwrap()
    }

    fn pv(
        name: &str,
        class: &str,
        size: &str,
        modes: &[&str],
        claim: Option<&str>,
    ) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name}, "spec": {"storageClassName": class,
            "capacity": {"storage": size}, "accessModes": modes, "hostPath": {"path": "/x"}}});
        if let Some(c) = claim {
            v["spec"]["claimRef"] = json!({"namespace": "default", "name": c});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn claims_bind_to_the_smallest_fitting_volume() {
        let vols = [
            pv("big", "manual", "10Gi", &["ReadWriteOnce"], None),
            pv(
                "small",
                "manual",
                "1Gi",
                &["ReadWriteOnce", "ReadOnlyMany"],
                None,
            ),
            pv("tiny", "manual", "500Mi", &["ReadWriteOnce"], None),
            pv("other-class", "fast", "1Gi", &["ReadWriteOnce"], None),
            pv(
                "taken",
                "manual",
                "1Gi",
                &["ReadWriteOnce"],
                Some("someone"),
            ),
        ];
        let refs: Vec<&PersistentVolume> = vols.iter().collect();
        let name =
            |c: &PersistentVolumeClaim| pick_volume(c, &refs).and_then(|p| p.metadata.name.clone());
        assert_eq!(
            name(&claim(Some("manual"), "1Gi", &["ReadWriteOnce"])).as_deref(),
            Some("small")
        );
        assert_eq!(
            name(&claim(Some("manual"), "2G", &["ReadWriteOnce"])).as_deref(),
            Some("big")
        );
        assert_eq!(
            name(&claim(Some("manual"), "1Gi", &["ReadWriteMany"])),
            None
        );
        assert_eq!(name(&claim(Some("none"), "1Gi", &["ReadWriteOnce"])), None);
        let prebound = [pv(
            "mine",
            "manual",
            "1Gi",
            &["ReadWriteOnce"],
            Some("data-web-0"),
        )];
        let refs: Vec<&PersistentVolume> = prebound.iter().chain(vols.iter()).collect();
        assert_eq!(
            pick_volume(&claim(Some("manual"), "1Gi", &["ReadWriteOnce"]), &refs)
                .and_then(|p| p.metadata.name.as_deref()),
            Some("mine")
        );
        assert_eq!(quantity("1Gi"), Some(1073741824.0));
        assert_eq!(quantity("500M"), Some(5e8));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("lots"), None);
    }

    #[test]
    fn a_provisioned_volume() {
        let class: StorageClass = serde_json::from_value(json!({"metadata": {"name": "standard"},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}))
        .unwrap();
        let c = claim(Some("standard"), "1Gi", &["ReadWriteOnce"]);
        let dir = volume_dir(Path::new("/run/kemu/lab/volumes"), &c);
        assert_eq!(
            dir,
            Path::new("/run/kemu/lab/volumes/pvc-u1_default_data-web-0")
        );
        let v = provisioned_volume(&c, &class, &dir, Some("192.168.0.202"));
        crate::testing::snapshot_settings().bind(|| insta::assert_json_snapshot!(v));
        assert_eq!(default_class(&[&class]), None);
    }
}
