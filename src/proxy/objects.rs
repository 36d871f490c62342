//! Reading Services and EndpointSlices from YAML: several documents per file, `kind: List`
//! objects flattened, other kinds reported as warnings (the proxy only watches these two).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

/// The objects a proxy renders from, plus what was skipped.
#[derive(Debug, Default)]
pub struct ProxyObjects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// One line per ignored object, e.g. `ignoring ReplicationController default/nginx`.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("cannot parse YAML: {0}")]
    Yaml(String),
    #[error("document {index}: {kind} {name} is not a valid {kind}: {source}")]
    Invalid {
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn name_of(obj: &Value) -> String {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("<unnamed>");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// One object of a YAML file.
#[derive(Debug)]
pub struct FileObject {
    /// The document it came from, counted from 1.
    pub document: usize,
    pub kind: String,
    pub value: Value,
}

impl FileObject {
    /// `namespace/name` (or `name`), as warnings and errors name it.
    pub fn name(&self) -> String {
        name_of(&self.value)
    }

    /// The object as a typed `T`, or why it is not a valid one.
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T, ObjectsError> {
        let name = self.name();
        serde_json::from_value(self.value).map_err(|source| ObjectsError::Invalid {
            index: self.document,
            kind: self.kind,
            name,
            source,
        })
    }
}

/// Every object of `text`: several documents, `kind: List` flattened.
pub fn file_objects(text: &str) -> Result<Vec<FileObject>, ObjectsError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ObjectsError::Yaml(e.to_string()))?;
    let mut out = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let items = if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
            doc["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![doc]
        };
        out.extend(items.into_iter().map(|value| FileObject {
            document: index + 1,
            kind: value["kind"].as_str().unwrap_or("<no kind>").to_owned(),
            value,
        }));
    }
    Ok(out)
}

/// Parse every YAML document of `text`.
pub fn parse_yaml(text: &str) -> Result<ProxyObjects, ObjectsError> {
    let mut out = ProxyObjects::default();
    for obj in file_objects(text)? {
        match obj.kind.as_str() {
            "Service" => out.services.push(obj.parse()?),
            "EndpointSlice" => out.endpoint_slices.push(obj.parse()?),
            kind => out.warnings.push(format!(
                "ignoring {kind} {}: the proxy only reads Services and EndpointSlices",
                obj.name()
            )),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_lists_are_flattened() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: [10.1.0.1]}]
  ports: [{name: "", port: 80}]
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: default}
"#;
        let objects = parse_yaml(yaml).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.endpoint_slices.len(), 1);
        assert_eq!(
            objects.warnings,
            vec!["ignoring Pod default/p: the proxy only reads Services and EndpointSlices"]
        );
    }

    #[test]
    fn invalid_objects_are_named() {
        let yaml = "kind: Service\nmetadata: {name: a, namespace: x}\nspec: {ports: 3}\n";
        let err = parse_yaml(yaml).unwrap_err().to_string();
        assert!(
            err.starts_with("document 1: Service x/a is not a valid Service"),
            "{err}"
        );
    }
}
