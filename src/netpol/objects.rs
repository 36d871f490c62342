//! Reading Pods, Namespaces and NetworkPolicies from YAML (`kemu netpol render`, tests):
//! several documents per file, `kind: List` flattened, other kinds reported as warnings.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

pub use crate::proxy::objects::ObjectsError;

/// The objects a policy table is rendered from, plus what was skipped.
#[derive(Debug, Default)]
pub struct PolicyObjects {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub policies: Vec<NetworkPolicy>,
    /// One line per ignored object.
    pub warnings: Vec<String>,
}

fn name_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("<unnamed>");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// Parse every YAML document of `text`. Objects without a namespace are in `default`.
pub fn parse_yaml(text: &str) -> Result<PolicyObjects, ObjectsError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ObjectsError::Yaml(e.to_string()))?;
    let mut out = PolicyObjects::default();
    for (index, doc) in docs.into_iter().enumerate() {
        let items = if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
            doc["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![doc]
        };
        for mut obj in items {
            let kind = obj["kind"].as_str().unwrap_or("<no kind>").to_owned();
            if kind != "Namespace"
                && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.entry("namespace").or_insert_with(|| "default".into());
            }
            let name = name_of(&obj);
            let invalid = |source| ObjectsError::Invalid {
                index: index + 1,
                kind: kind.clone(),
                name: name.clone(),
                source,
            };
            match kind.as_str() {
                "Pod" => out.pods.push(serde_json::from_value(obj).map_err(invalid)?),
                "Namespace" => out
                    .namespaces
                    .push(serde_json::from_value(obj).map_err(invalid)?),
                "NetworkPolicy" => out
                    .policies
                    .push(serde_json::from_value(obj).map_err(invalid)?),
                _ => out.warnings.push(format!(
                    "ignoring {kind} {name}: policies are rendered from Pods, Namespaces and NetworkPolicies"
                )),
            }
        }
    }
    Ok(out)
}

impl PolicyObjects {
    /// Build the model of `node` (every node with `None`).
    pub fn model(&self, node: Option<&str>) -> super::Model {
        let pods: Vec<&Pod> = self.pods.iter().collect();
        let namespaces: Vec<&Namespace> = self.namespaces.iter().collect();
        let policies: Vec<&NetworkPolicy> = self.policies.iter().collect();
        super::model::build(
            super::Objects {
                pods: &pods,
                namespaces: &namespaces,
                policies: &policies,
            },
            node,
        )
    }
}
