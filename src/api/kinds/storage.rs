//! core/v1 PersistentVolume and PersistentVolumeClaim, storage.k8s.io/v1 StorageClass.
//! Binding claims to volumes is a controller's work; the API server defaults, validates and
//! starts both in phase `Pending`.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Hooks, arr, immutable, nothing, str_of};
use crate::api::object::{ensure_map, set_default, str_at};
use crate::api::status::FieldError;
use crate::api::table::{AGE, NAME, age, name};

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// `RWO,ROX,RWX,RWOP` in that order (`GetAccessModesAsString`).
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v == m);
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn check_access_modes(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let modes = arr(spec, "/accessModes");
    if modes.is_empty() {
        errs.push(FieldError::required(
            path,
            "at least 1 access mode is required",
        ));
    }
    for m in modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            errs.push(FieldError::not_supported(path, m, ACCESS_MODES));
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        errs.push(FieldError::forbidden(
            path,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5`, `2e3`).
pub fn is_quantity(q: &Value) -> bool {
    match q {
        Value::Number(_) => true,
        Value::String(s) => {
            const SUFFIXES: &[&str] = &[
                "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
            ];
            let s = s.trim();
            let (sign_less, _) = match s.strip_prefix(['+', '-']) {
                Some(rest) => (rest, true),
                None => (s, false),
            };
            let digits_end = sign_less
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(sign_less.len());
            let (number, suffix) = sign_less.split_at(digits_end);
            let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
            let suffix_ok = SUFFIXES.contains(&suffix)
                || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
                    e.strip_prefix(['+', '-'])
                        .unwrap_or(e)
                        .parse::<u32>()
                        .is_ok()
                });
            number_ok && suffix_ok
        }
        _ => false,
    }
}

fn storage_class_of(obj: &Value) -> String {
    match obj
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
    {
        Some(c) => c.to_string(),
        None => str_at(
            obj,
            "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
        )
        .to_string(),
    }
}

fn phase(obj: &Value) -> String {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        "Terminating".into()
    } else {
        str_at(obj, "/status/phase").to_string()
    }
}

// ----- PersistentVolume -----

/// The volume sources a PersistentVolume may name (exactly one).
const PV_SOURCES: &[&str] = &[
    "hostPath",
    "local",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "cephfs",
    "rbd",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cinder",
    "flexVolume",
    "flocker",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

fn pv_defaults(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
    set_default(spec, "volumeMode", json!("Filesystem"));
}

fn pending(obj: &mut Value) {
    set_default(ensure_map(obj, "status"), "phase", json!("Pending"));
}

fn validate_pv(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    check_access_modes("spec.accessModes", &spec, errs);
    match spec.pointer("/capacity/storage") {
        None => errs.push(FieldError::required("spec.capacity", "")),
        Some(q) if !is_quantity(q) => errs.push(FieldError::invalid(
            "spec.capacity[storage]",
            q.clone(),
            "must be a quantity",
        )),
        _ => {}
    }
    let sources = PV_SOURCES
        .iter()
        .filter(|s| spec.get(**s).is_some_and(|v| !v.is_null()))
        .count();
    if sources == 0 {
        errs.push(FieldError::required("spec", "must specify a volume type"));
    } else if sources > 1 {
        errs.push(FieldError::forbidden(
            "spec",
            "may not specify more than 1 volume type",
        ));
    }
    let policy = str_of(&spec, "persistentVolumeReclaimPolicy").unwrap_or("Retain");
    if !["Delete", "Recycle", "Retain"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            policy,
            &["Delete", "Recycle", "Retain"],
        ));
    }
    if let Some(old) = old {
        for f in PV_SOURCES {
            immutable(
                &format!("spec.{f}"),
                spec.get(*f),
                old.pointer(&format!("/spec/{f}")),
                errs,
            );
        }
        immutable(
            "spec.volumeMode",
            spec.get("volumeMode"),
            old.pointer("/spec/volumeMode"),
            errs,
        );
    }
}

fn pv_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let claim = match obj.pointer("/spec/claimRef") {
        Some(c) if c.is_object() => format!("{}/{}", str_at(c, "/namespace"), str_at(c, "/name")),
        _ => String::new(),
    };
    let capacity = match obj.pointer("/spec/capacity/storage") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "0".into(),
    };
    let or_unset = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("<unset>")
            .to_string()
    };
    vec![
        name(obj),
        json!(capacity),
        json!(access_modes(arr(obj, "/spec/accessModes"))),
        json!(str_at(obj, "/spec/persistentVolumeReclaimPolicy")),
        json!(phase(obj)),
        json!(claim),
        json!(storage_class_of(obj)),
        json!(or_unset("/spec/volumeAttributesClassName")),
        json!(str_at(obj, "/status/reason")),
        age(obj, now),
        json!(or_unset("/spec/volumeMode")),
    ]
}

pub static PERSISTENT_VOLUME: Hooks = Hooks {
    defaults: pv_defaults,
    initial_status: pending,
    validate: validate_pv,
    columns: &[
        NAME,
        (
            "Capacity",
            "string",
            "",
            0,
            "capacity is the description of the persistent volume's resources and capacity.",
        ),
        (
            "Access Modes",
            "string",
            "",
            0,
            "accessModes contains all ways the volume can be mounted.",
        ),
        (
            "Reclaim Policy",
            "string",
            "",
            0,
            "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
        ),
        (
            "Status",
            "string",
            "",
            0,
            "phase indicates if a volume is available, bound to a claim, or released by a claim.",
        ),
        (
            "Claim",
            "string",
            "",
            0,
            "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
        ),
        ("StorageClass", "string", "", 0, "StorageClass of the pv"),
        (
            "VolumeAttributesClass",
            "string",
            "",
            0,
            "VolumeAttributesClass of the pv",
        ),
        (
            "Reason",
            "string",
            "",
            0,
            "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
        ),
        AGE,
        (
            "VolumeMode",
            "string",
            "",
            1,
            "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
        ),
    ],
    cells: pv_cells,
};

// ----- PersistentVolumeClaim -----

fn pvc_defaults(obj: &mut Value) {
    set_default(ensure_map(obj, "spec"), "volumeMode", json!("Filesystem"));
}

fn validate_pvc(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    check_access_modes("spec.accessModes", &spec, errs);
    match spec.pointer("/resources/requests/storage") {
        None => errs.push(FieldError::required("spec.resources[storage]", "")),
        Some(q) if !is_quantity(q) => errs.push(FieldError::invalid(
            "spec.resources.requests[storage]",
            q.clone(),
            "must be a quantity",
        )),
        _ => {}
    }
    if let Some(old) = old {
        // Binding fills volumeName; otherwise only the requests (expansion) and the attributes
        // class may change.
        let strip = |v: Option<&Value>| {
            let mut s = v.cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                m.remove("resources");
                m.remove("volumeAttributesClassName");
                if old
                    .pointer("/spec/volumeName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    m.remove("volumeName");
                }
            }
            s
        };
        if strip(obj.get("spec")) != strip(old.get("spec")) {
            errs.push(FieldError::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
    }
}

fn pvc_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let bound = !str_at(obj, "/spec/volumeName").is_empty();
    let (capacity, modes) = if bound {
        let cap = match obj.pointer("/status/capacity/storage") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "0".into(),
        };
        (cap, access_modes(arr(obj, "/status/accessModes")))
    } else {
        (String::new(), String::new())
    };
    let or_unset = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("<unset>")
            .to_string()
    };
    vec![
        name(obj),
        json!(phase(obj)),
        json!(str_at(obj, "/spec/volumeName")),
        json!(capacity),
        json!(modes),
        json!(storage_class_of(obj)),
        json!(or_unset("/spec/volumeAttributesClassName")),
        age(obj, now),
        json!(or_unset("/spec/volumeMode")),
    ]
}

pub static PERSISTENT_VOLUME_CLAIM: Hooks = Hooks {
    defaults: pvc_defaults,
    initial_status: pending,
    validate: validate_pvc,
    columns: &[
        NAME,
        (
            "Status",
            "string",
            "",
            0,
            "phase represents the current phase of PersistentVolumeClaim.",
        ),
        (
            "Volume",
            "string",
            "",
            0,
            "volumeName is the binding reference to the PersistentVolume backing this claim.",
        ),
        (
            "Capacity",
            "string",
            "",
            0,
            "capacity represents the actual resources of the underlying volume.",
        ),
        (
            "Access Modes",
            "string",
            "",
            0,
            "accessModes contains the actual access modes the volume backing the PVC has.",
        ),
        ("StorageClass", "string", "", 0, "StorageClass of the pvc"),
        (
            "VolumeAttributesClass",
            "string",
            "",
            0,
            "VolumeAttributesClass of the pvc",
        ),
        AGE,
        (
            "VolumeMode",
            "string",
            "",
            1,
            "volumeMode defines what type of volume is required by the claim.",
        ),
    ],
    cells: pvc_cells,
};

// ----- StorageClass -----

fn storage_class_defaults(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    set_default(map, "reclaimPolicy", json!("Delete"));
    set_default(map, "volumeBindingMode", json!("Immediate"));
}

fn validate_storage_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    if str_of(obj, "provisioner").is_none_or(str::is_empty) {
        errs.push(FieldError::required("provisioner", ""));
    }
    let policy = str_of(obj, "reclaimPolicy").unwrap_or("Delete");
    if !["Delete", "Retain"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "reclaimPolicy",
            policy,
            &["Delete", "Retain"],
        ));
    }
    let mode = str_of(obj, "volumeBindingMode").unwrap_or("Immediate");
    if !["Immediate", "WaitForFirstConsumer"].contains(&mode) {
        errs.push(FieldError::not_supported(
            "volumeBindingMode",
            mode,
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
    if let Some(old) = old {
        if obj.get("parameters") != old.get("parameters") {
            errs.push(FieldError::forbidden(
                "parameters",
                "updates to parameters are forbidden.",
            ));
        }
        if obj.get("provisioner") != old.get("provisioner") {
            errs.push(FieldError::forbidden(
                "provisioner",
                "updates to provisioner are forbidden.",
            ));
        }
        if obj.get("reclaimPolicy") != old.get("reclaimPolicy") {
            errs.push(FieldError::forbidden(
                "reclaimPolicy",
                "updates to reclaimPolicy are forbidden.",
            ));
        }
        immutable(
            "volumeBindingMode",
            obj.get("volumeBindingMode"),
            old.get("volumeBindingMode"),
            errs,
        );
    }
}

fn storage_class_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let default = str_at(
        obj,
        "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
    ) == "true";
    let shown = if default {
        format!("{} (default)", str_at(obj, "/metadata/name"))
    } else {
        str_at(obj, "/metadata/name").to_string()
    };
    vec![
        json!(shown),
        json!(str_at(obj, "/provisioner")),
        json!(
            obj.get("reclaimPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Delete")
        ),
        json!(
            obj.get("volumeBindingMode")
                .and_then(Value::as_str)
                .unwrap_or("Immediate")
        ),
        json!(
            obj.get("allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        ),
        age(obj, now),
    ]
}

pub static STORAGE_CLASS: Hooks = Hooks {
    defaults: storage_class_defaults,
    initial_status: nothing,
    validate: validate_storage_class,
    columns: &[
        NAME,
        (
            "Provisioner",
            "string",
            "",
            0,
            "provisioner indicates the type of the provisioner.",
        ),
        (
            "ReclaimPolicy",
            "string",
            "",
            0,
            "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
        ),
        (
            "VolumeBindingMode",
            "string",
            "",
            0,
            "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
        ),
        (
            "AllowVolumeExpansion",
            "string",
            "",
            0,
            "allowVolumeExpansion shows whether the storage class allow volume expand.",
        ),
        AGE,
    ],
    cells: storage_class_cells,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1Gi", "500M", "1.5", "2e3", "100m", "+1Ki"] {
            assert!(is_quantity(&json!(ok)), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1..5", "ten"] {
            assert!(!is_quantity(&json!(bad)), "{bad}");
        }
        assert_eq!(
            access_modes(&[json!("ReadWriteMany"), json!("ReadWriteOnce")]),
            "RWO,RWX"
        );
    }
}
