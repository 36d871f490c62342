//! Reading Pods, Namespaces and NetworkPolicies from YAML (`kemu netpol render`, tests):
//! several documents per file, `kind: List` flattened, other kinds reported as warnings.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

pub use crate::proxy::objects::ObjectsError;
use crate::proxy::objects::file_objects;

/// The objects a policy table is rendered from, plus what was skipped.
#[derive(Debug, Default)]
pub struct PolicyObjects {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub policies: Vec<NetworkPolicy>,
    /// One line per ignored object.
    pub warnings: Vec<String>,
}

/// Parse every YAML document of `text`. Objects without a namespace are in `default`.
pub fn parse_yaml(text: &str) -> Result<PolicyObjects, ObjectsError> {
    let mut out = PolicyObjects::default();
    for mut obj in file_objects(text)? {
        if obj.kind != "Namespace"
            && let Some(meta) = obj.value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.entry("namespace").or_insert_with(|| "default".into());
        }
        match obj.kind.as_str() {
            "Pod" => out.pods.push(obj.parse()?),
            "Namespace" => out.namespaces.push(obj.parse()?),
            "NetworkPolicy" => out.policies.push(obj.parse()?),
            kind => out.warnings.push(format!(
                "ignoring {kind} {}: policies are rendered from Pods, Namespaces and NetworkPolicies",
                obj.name()
            )),
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
