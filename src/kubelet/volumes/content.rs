//! What the files of a configMap, secret, downwardAPI or projected volume are, as the
//! kubelet's volume plugins compute them: pure, from the pod and the objects it names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume, VolumeProjection,
};

use crate::kubelet::env::{Downward, field_ref};

/// A file of a volume: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Files = BTreeMap<String, FileContent>;

/// The objects and values a pod's volumes read.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    /// Service-account tokens by (audience, expirationSeconds).
    pub tokens: BTreeMap<(String, i64), String>,
    pub downward: Downward,
}

/// The kind of volume, as the kubelet names its plugin directories
/// (`volumes/kubernetes.io~configmap/<name>`).
pub fn plugin(volume: &Volume) -> Option<&'static str> {
    if volume.config_map.is_some() {
        Some("kubernetes.io~configmap")
    } else if volume.secret.is_some() {
        Some("kubernetes.io~secret")
    } else if volume.downward_api.is_some() {
        Some("kubernetes.io~downward-api")
    } else if volume.projected.is_some() {
        Some("kubernetes.io~projected")
    } else {
        None
    }
}

/// The default `defaultMode` (0644) of these volumes.
const DEFAULT_MODE: i32 = 0o644;

/// A service-account token a projected volume asks for: (audience, expirationSeconds). An
/// empty audience means the API server's own.
pub fn tokens_wanted(volume: &Volume) -> Vec<(String, i64)> {
    volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| {
            (
                t.audience.clone().unwrap_or_default(),
                t.expiration_seconds.unwrap_or(3600),
            )
        })
        .collect()
}

/// The files of `volume` (`None`: not a kind of volume this module makes). The error is the
/// kubelet's `MountVolume.SetUp failed` reason.
pub fn files(volume: &Volume, pod: &Pod, objects: &Objects) -> Option<Result<Files, String>> {
    let mut out = Files::new();
    let result = if let Some(cm) = &volume.config_map {
        let mode = cm.default_mode.unwrap_or(DEFAULT_MODE);
        config_map(
            &mut out,
            &cm.name,
            cm.items.as_deref(),
            cm.optional,
            mode,
            objects,
        )
    } else if let Some(s) = &volume.secret {
        let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
        let name = s.secret_name.clone().unwrap_or_default();
        secret(
            &mut out,
            &name,
            s.items.as_deref(),
            s.optional,
            mode,
            objects,
        )
    } else if let Some(d) = &volume.downward_api {
        let mode = d.default_mode.unwrap_or(DEFAULT_MODE);
        downward(
            &mut out,
            d.items.as_deref().unwrap_or_default(),
            mode,
            pod,
            objects,
        )
    } else if let Some(p) = &volume.projected {
        let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
        p.sources
            .iter()
            .flatten()
            .try_for_each(|source| projection(&mut out, source, mode, pod, objects))
    } else {
        return None;
    };
    Some(result.map(|()| out))
}

fn projection(
    out: &mut Files,
    source: &VolumeProjection,
    mode: i32,
    pod: &Pod,
    objects: &Objects,
) -> Result<(), String> {
    if let Some(cm) = &source.config_map {
        config_map(
            out,
            &cm.name,
            cm.items.as_deref(),
            cm.optional,
            mode,
            objects,
        )
    } else if let Some(s) = &source.secret {
        secret(out, &s.name, s.items.as_deref(), s.optional, mode, objects)
    } else if let Some(d) = &source.downward_api {
        downward(
            out,
            d.items.as_deref().unwrap_or_default(),
            mode,
            pod,
            objects,
        )
    } else if let Some(t) = &source.service_account_token {
        let key = (
            t.audience.clone().unwrap_or_default(),
            t.expiration_seconds.unwrap_or(3600),
        );
        let token = objects.tokens.get(&key).ok_or_else(|| {
            "failed to fetch token: the service account token is not there yet".to_string()
        })?;
        put(out, &t.path, token.as_bytes().to_vec(), mode)
    } else {
        // clusterTrustBundle and other sources are not served.
        Ok(())
    }
}

/// The keys of an object's data as files: all of them, or the listed items.
fn keyed(
    out: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    mode: i32,
    what: &str,
) -> Result<(), String> {
    match items {
        None | Some([]) => {
            for (key, value) in data {
                put(out, key, value.clone(), mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => put(out, &item.path, value.clone(), item.mode.unwrap_or(mode))?,
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{what} references non-existent config key: {}",
                            item.key
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn config_map(
    out: &mut Files,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: i32,
    objects: &Objects,
) -> Result<(), String> {
    let data = objects.config_maps.get(name).map(|cm| {
        let text = cm.data.iter().flatten();
        let binary = cm.binary_data.iter().flatten();
        text.map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .chain(binary.map(|(k, v)| (k.clone(), v.0.clone())))
            .collect()
    });
    object_files(
        out,
        ("configmap", "configMap"),
        name,
        data,
        items,
        optional,
        mode,
    )
}

fn secret(
    out: &mut Files,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: i32,
    objects: &Objects,
) -> Result<(), String> {
    let data = objects.secrets.get(name).map(|s| {
        let bytes = s.data.iter().flatten();
        let text = s.string_data.iter().flatten();
        bytes
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .chain(text.map(|(k, v)| (k.clone(), v.clone().into_bytes())))
            .collect()
    });
    object_files(out, ("secret", "secret"), name, data, items, optional, mode)
}

/// The files of a ConfigMap's or Secret's keys (`data`: `None` when the object is missing),
/// with the kubelet's words (`kind`: as in "not found", as in "references") when they fail.
fn object_files(
    out: &mut Files,
    (kind, field): (&str, &str),
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: i32,
) -> Result<(), String> {
    let optional = optional.unwrap_or(false);
    match data {
        Some(data) => keyed(out, &data, items, optional, mode, field),
        None if optional => Ok(()),
        None => Err(format!("{kind} \"{name}\" not found")),
    }
}

fn downward(
    out: &mut Files,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
    pod: &Pod,
    objects: &Objects,
) -> Result<(), String> {
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), _) => match f.field_path.as_str() {
                "metadata.labels" => map_lines(pod.metadata.labels.as_ref()),
                "metadata.annotations" => map_lines(pod.metadata.annotations.as_ref()),
                path => field_ref(pod, path, &objects.downward).map_err(|e| e.0)?,
            },
            // kemu sets no resource limits: a limit reads as unset, which the kubelet
            // answers with the node's allocatable; kemu has none to give, so "0".
            (None, Some(_)) => "0".to_string(),
            (None, None) => String::new(),
        };
        put(
            out,
            &item.path,
            value.into_bytes(),
            item.mode.unwrap_or(mode),
        )?;
    }
    Ok(())
}

/// Labels or annotations as the downward API writes them: `key="value"` lines, sorted, the
/// value quoted as Go's `%q` does.
fn map_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Add one file; a path must be relative, without `..` (the API validates that too).
fn put(out: &mut Files, path: &str, data: Vec<u8>, mode: i32) -> Result<(), String> {
    let clean = !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|p| !p.is_empty() && p != "..")
        && !path.starts_with("..");
    if !clean {
        return Err(format!("invalid path {path:?} in volume"));
    }
    out.insert(
        path.to_string(),
        FileContent {
            data,
            mode: (mode as u32) & 0o777,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Objects {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "app"},
            "data": {"app.conf": "listen 80\n", "mode": "prod"},
            "binaryData": {"logo": "AAEC"}}))
        .unwrap();
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": "db"},
            "data": {"password": "czNjcjN0"}}))
        .unwrap();
        Objects {
            config_maps: BTreeMap::from([("app".into(), cm)]),
            secrets: BTreeMap::from([("db".into(), s)]),
            tokens: BTreeMap::from([(("".into(), 3607), "TOKEN".into())]),
            downward: Downward::default(),
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-1", "namespace": "shop",
            "labels": {"app": "web", "tier": "front \"end\""}}}))
        .unwrap()
    }

    fn render(volume: serde_json::Value) -> Result<Vec<String>, String> {
        let v: Volume = serde_json::from_value(volume).unwrap();
        files(&v, &pod(), &objects()).unwrap().map(|f| {
            f.iter()
                .map(|(p, c)| format!("{p} {:o} {:?}", c.mode, String::from_utf8_lossy(&c.data)))
                .collect()
        })
    }

    #[test]
    fn volumes_as_the_kubelet_writes_them() {
        insta::assert_yaml_snapshot!(json!({
            "configMap": render(json!({"name": "c", "configMap": {"name": "app"}})),
            "configMap items": render(json!({"name": "c", "configMap": {"name": "app", "defaultMode": 0o400,
                "items": [{"key": "mode", "path": "conf/mode"}, {"key": "app.conf", "path": "x", "mode": 0o600}]}})),
            "secret": render(json!({"name": "s", "secret": {"secretName": "db"}})),
            "downwardAPI": render(json!({"name": "d", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}})),
            "projected token": render(json!({"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "app", "items": [{"key": "mode", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})),
        }));
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        assert_eq!(
            render(json!({"name": "c", "configMap": {"name": "nope"}})).unwrap_err(),
            "configmap \"nope\" not found"
        );
        assert_eq!(
            render(json!({"name": "c", "configMap": {"name": "nope", "optional": true}})).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            render(json!({"name": "s", "secret": {"secretName": "db", "items": [{"key": "user", "path": "u"}]}}))
                .unwrap_err(),
            "secret references non-existent config key: user"
        );
        assert!(render(json!({"name": "c", "configMap": {"name": "app", "items": [{"key": "mode", "path": "../x"}]}})).is_err());
    }
}
