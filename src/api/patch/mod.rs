//! PATCH bodies: strategic merge patch (kubectl's default and client-side apply), JSON merge patch
//! (RFC 7386), JSON patch (RFC 6902) and server-side apply (`application/apply-patch+yaml`).

pub mod strategic;

use serde_json::Value;

use super::status::ApiError;

/// The patch flavours, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Strategic,
    Merge,
    Json,
    Apply,
}

/// The patch types of built-in resources, in kube-apiserver's order (CBOR apply is behind a
/// feature gate that is off by default).
const PATCH_MEDIA_TYPES: [(&str, PatchType); 4] = [
    ("application/json-patch+json", PatchType::Json),
    ("application/merge-patch+json", PatchType::Merge),
    (
        "application/strategic-merge-patch+json",
        PatchType::Strategic,
    ),
    ("application/apply-patch+yaml", PatchType::Apply),
];

/// kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

impl PatchType {
    /// The patch type a Content-Type names, without its parameters; any other is a 415.
    pub fn from_media_type(media: &str) -> Result<PatchType, ApiError> {
        PATCH_MEDIA_TYPES
            .iter()
            .find(|(m, _)| *m == media)
            .map(|(_, ty)| *ty)
            .ok_or_else(|| ApiError::unsupported_media_type(&PATCH_MEDIA_TYPES.map(|(m, _)| m)))
    }
}

/// Parse a request body: JSON first, then YAML (apply bodies may be YAML).
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_err) => {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request(format!("the request body is not JSON: {json_err}"))
            })?;
            serde_saphyr::from_str::<Value>(text).map_err(|yaml_err| {
                ApiError::bad_request(format!(
                    "error decoding the body as JSON ({json_err}) or YAML ({yaml_err})"
                ))
            })
        }
    }
}

/// Apply a non-apply patch of type `ty` to `target` (the kind picks the merge keys).
pub fn apply_patch(
    ty: PatchType,
    kind: &str,
    target: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let mut out = target.clone();
    match ty {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "merge patch body must be a JSON object",
                ));
            }
            json_patch::merge(&mut out, patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is invalid: {e}")))?;
            if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::request_entity_too_large(format!(
                    "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                    ops.0.len()
                )));
            }
            json_patch::patch(&mut out, &ops.0)
                .map_err(|e| ApiError::invalid_json_patch(&e.to_string()))?;
        }
        PatchType::Strategic | PatchType::Apply => {
            let Some(p) = patch.as_object() else {
                return Err(ApiError::bad_request(
                    "strategic merge patch body must be a JSON object",
                ));
            };
            strategic::merge(kind, &mut out, p).map_err(ApiError::bad_request)?;
        }
    }
    Ok(out)
}

impl ApiError {
    /// A JSON patch that cannot be applied (422, like the real server).
    pub fn invalid_json_patch(why: &str) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "the server rejected our request due to an error in our request: {why}"
            ),
            details: None,
            continue_token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_json_patch() {
        let target = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1, "list": [1, 2]}});
        let merged = apply_patch(
            PatchType::Merge,
            "ReplicationController",
            &target,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"list": [3]}}),
        )
        .unwrap();
        let jp = apply_patch(
            PatchType::Json,
            "ReplicationController",
            &target,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5}, {"op": "add", "path": "/spec/list/-", "value": 9},
                    {"op": "remove", "path": "/metadata/labels/b"}, {"op": "test", "path": "/spec/replicas", "value": 5}]),
        )
        .unwrap();
        let bad = apply_patch(
            PatchType::Json,
            "Pod",
            &target,
            &json!([{"op": "remove", "path": "/nope"}]),
        )
        .unwrap_err();
        let out = format!(
            "merge: {}\njson: {}\nbad: {} {}\nct: {:?}",
            merged,
            jp,
            bad.code,
            bad.message,
            PatchType::from_media_type("text/plain").unwrap_err().code
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn yaml_bodies() {
        let v = parse_body(b"kind: Pod\nmetadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"kind": "Pod", "metadata": {"name": "x"}}));
        assert_eq!(parse_body(b"{\"a\":1}").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn json_patch_operations_are_limited() {
        let ops = |n: usize| {
            json!(
                (0..n)
                    .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
                    .collect::<Vec<_>>()
            )
        };
        let target = json!({"a": 1});
        assert!(
            apply_patch(
                PatchType::Json,
                "Pod",
                &target,
                &ops(MAX_JSON_PATCH_OPERATIONS)
            )
            .is_ok()
        );
        let e = apply_patch(
            PatchType::Json,
            "Pod",
            &target,
            &ops(MAX_JSON_PATCH_OPERATIONS + 1),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                413,
                "RequestEntityTooLarge",
                "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
            )
        );
    }

    #[test]
    fn patch_media_types() {
        assert_eq!(
            PatchType::from_media_type("application/apply-patch+yaml"),
            Ok(PatchType::Apply)
        );
        for refused in [
            "application/json",
            "text/plain",
            "application/apply-patch+cbor",
        ] {
            assert_eq!(
                PatchType::from_media_type(refused).unwrap_err().message,
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
            );
        }
    }
}
