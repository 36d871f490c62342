//! Strict field validation (`fieldValidation=Strict|Warn|Ignore`).
//!
//! The body is decoded into the k8s-openapi type of its kind and encoded again; every field of the
//! input that did not survive is unknown to the schema. Nulls are skipped (they decode to "absent").
//! Unknown fields are also removed from the object before it is stored, as the real server's typed
//! decoding drops them.

use serde_json::Value;

use super::kinds::config::base64_problem;
use super::resources::{RESOURCES, id};

/// How the request wants unknown fields handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    /// The query parameter; the real server's default is `Warn`.
    pub fn parse(s: Option<&str>) -> FieldValidation {
        match s {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

/// One field the schema does not know: its display path (`spec.replica`) and JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    pub path: String,
    pub pointer: String,
}

/// Decode `v` into `T` and encode it again (a kind's [`ResourceType::typed`]).
///
/// [`ResourceType::typed`]: super::resources::ResourceType::typed
pub fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The typed round trip of `obj` for resource `rt`; `Err` carries the decoding error.
pub fn normalised(rt: usize, obj: &Value) -> Result<Value, String> {
    // Bytes fields are base64 in JSON; Go's decoder names where it stopped.
    let bytes_field = match rt {
        id::SECRETS => Some("data"),
        id::CONFIG_MAPS => Some("binaryData"),
        _ => None,
    };
    if let Some(problem) = bytes_field.and_then(|f| base64_problem(obj, f)) {
        return Err(problem);
    }
    (RESOURCES[rt].typed)(obj)
}

/// Fields of `obj` that the schema of `rt` does not know.
pub fn unknown_fields(rt: usize, obj: &Value) -> Result<Vec<UnknownField>, String> {
    let typed = normalised(rt, obj)?;
    let mut out = Vec::new();
    diff(obj, &typed, "", "", &mut out);
    Ok(out)
}

fn diff(input: &Value, typed: &Value, path: &str, pointer: &str, out: &mut Vec<UnknownField>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let ptr = format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1"));
                match b.get(k) {
                    None => out.push(UnknownField {
                        path: p,
                        pointer: ptr,
                    }),
                    Some(t) => diff(v, t, &p, &ptr, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, t)) in a.iter().zip(b.iter()).enumerate() {
                diff(
                    v,
                    t,
                    &format!("{path}[{i}]"),
                    &format!("{pointer}/{i}"),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Remove the unknown fields from `obj`.
pub fn drop_fields(obj: &mut Value, fields: &[UnknownField]) {
    for f in fields {
        let Some((parent, key)) = f.pointer.rsplit_once('/') else {
            continue;
        };
        let key = key.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
            m.remove(&key);
        }
    }
}

/// `strict decoding error: unknown field "a", unknown field "b"`.
pub fn message(fields: &[UnknownField]) -> String {
    let list: Vec<String> = fields
        .iter()
        .map(|f| format!("unknown field {:?}", f.path))
        .collect();
    format!("strict decoding error: {}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields() {
        let mut deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "b"}, "creationTimestamp": null},
            "spec": {"replica": 3, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "nginx", "imagee": "x", "resources": {}, "ports": [{"containerPort": 80, "hostPort": null}]}]}}}});
        let unknown = unknown_fields(id::DEPLOYMENTS, &deploy).unwrap();
        assert_eq!(
            message(&unknown),
            r#"strict decoding error: unknown field "spec.replica", unknown field "spec.template.spec.containers[0].imagee""#
        );
        drop_fields(&mut deploy, &unknown);
        assert!(deploy.pointer("/spec/replica").is_none());
        assert!(
            deploy
                .pointer("/spec/template/spec/containers/0/imagee")
                .is_none()
        );
        assert!(unknown_fields(id::DEPLOYMENTS, &deploy).unwrap().is_empty());
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": "x"}]}});
        assert!(unknown_fields(id::SERVICES, &svc).is_err());
    }
}
