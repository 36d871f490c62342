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

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<PatchType, ApiError> {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
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
            PatchType::from_content_type("text/plain").unwrap_err().code
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn yaml_bodies() {
        let v = parse_body(b"kind: Pod\nmetadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"kind": "Pod", "metadata": {"name": "x"}}));
        assert_eq!(parse_body(b"{\"a\":1}").unwrap(), json!({"a": 1}));
    }
}
