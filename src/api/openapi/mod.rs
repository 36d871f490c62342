//! Minimal OpenAPI documents: enough for kubectl to trust server-side field validation.
//!
//! kubectl looks, in the document of the object's group-version, for a PATCH operation tagged with
//! the object's GVK that declares a `fieldValidation` parameter; when found it skips client-side
//! schema validation and sends `fieldValidation=Strict`. kubectl 1.29+ reads OpenAPI v3; it reads
//! v2 (protobuf, [`v2`]) for kinds no v3 document declares, such as a `kind: List` file, whose
//! items it then validates client-side against v2's schemas. No schemas are served (`kubectl
//! explain` is out of scope), so that client-side step finds none and leaves the checking to the
//! server, which validates every item strictly. No `requestBody` either, so client-side apply
//! uses kubectl's built-in patch metadata.

pub mod v2;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::resources::{ResourceType, groups, in_group};

/// `api/v1` or `apis/apps/v1`: the keys of the root document.
fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub fn all_gvs() -> Vec<(&'static str, &'static str)> {
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    gvs
}

fn operation_id(r: &ResourceType) -> String {
    let group: String = r
        .group
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let group = if group.is_empty() {
        "Core".to_string()
    } else {
        group
    };
    let version: String = r
        .version
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let scope = if r.namespaced { "Namespaced" } else { "" };
    format!("patch{group}{version}{scope}{}", r.kind)
}

/// The query parameters of every PATCH operation, with their OpenAPI types.
pub const PATCH_PARAMETERS: [(&str, &str); 4] = [
    ("dryRun", "string"),
    ("fieldManager", "string"),
    ("fieldValidation", "string"),
    ("force", "boolean"),
];

/// One resource's PATCH operation, as both documents declare it.
pub struct PatchOperation {
    pub path: String,
    pub operation_id: String,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

/// The PATCH operations of one group-version (empty if it is not served). The reviews are
/// only ever created, and have none.
pub fn patch_operations(group: &str, version: &str) -> Vec<PatchOperation> {
    in_group(group, version)
        .filter(|r| r.stored)
        .map(|r| {
            let prefix = r.gv_path();
            let path = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("{prefix}/{}/{{name}}", r.plural)
            };
            PatchOperation {
                path,
                operation_id: operation_id(r),
                group: r.group,
                version: r.version,
                kind: r.kind,
            }
        })
        .collect()
}

/// The v3 document of one group-version, or `None` if not served.
pub fn group_version_document(group: &str, version: &str) -> Option<Value> {
    in_group(group, version).next()?;
    let mut paths = Map::new();
    for op in patch_operations(group, version) {
        let parameters: Vec<Value> = PATCH_PARAMETERS
            .iter()
            .map(|(name, ty)| json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}}))
            .collect();
        paths.insert(
            op.path,
            json!({"patch": {
                "operationId": op.operation_id,
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": op.group, "version": op.version, "kind": op.kind},
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::discovery::KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// The root `/openapi/v3`: every served group-version with a content hash in its URL, so
/// kubectl's disk cache never serves a stale document.
pub fn root() -> Value {
    let mut paths = Map::new();
    for (g, v) in all_gvs() {
        let doc = group_version_document(g, v).expect("served group-version");
        let digest = Sha256::digest(serde_json::to_vec(&doc).expect("serialisable"));
        let hash = data_encoding::HEXUPPER.encode(&digest[..16]);
        let key = gv_key(g, v);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_every_group_version() {
        let root = root();
        let keys: Vec<&String> = root["paths"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "api/v1",
                "apis/apps/v1",
                "apis/authentication.k8s.io/v1",
                "apis/authorization.k8s.io/v1",
                "apis/batch/v1",
                "apis/coordination.k8s.io/v1",
                "apis/discovery.k8s.io/v1",
                "apis/networking.k8s.io/v1",
                "apis/policy/v1",
                "apis/rbac.authorization.k8s.io/v1",
                "apis/storage.k8s.io/v1"
            ]
        );
        let apps = group_version_document("apps", "v1").unwrap();
        let op = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["operationId"], "patchAppsV1NamespacedDeployment");
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        let core = group_version_document("", "v1").unwrap();
        assert!(core["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        assert!(group_version_document("batch", "v2").is_none());
    }
}
