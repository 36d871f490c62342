//! `/openapi/v2` in the protobuf form kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`: gnostic's `openapi.v2.Document`).
//!
//! kubectl reads it when the v3 documents do not declare a kind, as for a `kind: List` file. It holds the same PATCH operations as the v3
//! documents and no definitions. The messages below are the subset of gnostic's
//! `openapiv2/OpenAPIv2.proto` that the document uses, with its field numbers.

use prost::Message;

use super::{PATCH_PARAMETERS, PatchOperation, all_gvs, patch_operations};

/// The media type of the answer. kubectl asks for `…spec.v2@v1.0+protobuf`, but Go's MIME parser
/// rejects the `@` in a Content-Type, so the answer spells it with a dot, as kube-openapi does.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `ParametersItem { oneof { Parameter parameter = 1 } }`
#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

/// `Parameter { oneof { NonBodyParameter non_body_parameter = 2 } }`
#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

/// `NonBodyParameter { oneof { QueryParameterSubSchema query_parameter_sub_schema = 3 } }`
#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

/// `ResponseValue { oneof { Response response = 1 } }`
#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
}

/// A vendor extension: its value is YAML text, as the real API server writes it.
#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

fn extension(name: &str, yaml: String) -> NamedAny {
    NamedAny {
        name: name.into(),
        value: Some(Any { yaml }),
    }
}

fn operation(op: &PatchOperation) -> Operation {
    let parameters = PATCH_PARAMETERS
        .iter()
        .map(|(name, ty)| ParametersItem {
            parameter: Some(Parameter {
                non_body_parameter: Some(NonBodyParameter {
                    query_parameter_sub_schema: Some(QueryParameterSubSchema {
                        r#in: "query".into(),
                        name: (*name).into(),
                        r#type: (*ty).into(),
                        unique_items: true,
                    }),
                }),
            }),
        })
        .collect();
    let responses = [("200", "OK"), ("201", "Created")]
        .iter()
        .map(|(code, description)| NamedResponseValue {
            name: (*code).into(),
            value: Some(ResponseValue {
                response: Some(Response {
                    description: (*description).into(),
                }),
            }),
        })
        .collect();
    Operation {
        operation_id: op.operation_id.clone(),
        parameters,
        responses: Some(Responses {
            response_code: responses,
        }),
        vendor_extension: vec![
            extension("x-kubernetes-action", "patch\n".into()),
            extension(
                "x-kubernetes-group-version-kind",
                format!(
                    "group: \"{}\"\nkind: {}\nversion: {}\n",
                    op.group, op.kind, op.version
                ),
            ),
        ],
    }
}

/// The whole v2 document: every served group-version's PATCH operations.
pub fn document() -> Document {
    let path = all_gvs()
        .into_iter()
        .flat_map(|(g, v)| patch_operations(g, v))
        .map(|op| NamedPathItem {
            name: op.path.clone(),
            value: Some(PathItem {
                patch: Some(operation(&op)),
            }),
        })
        .collect();
    Document {
        swagger: "2.0".into(),
        info: Some(Info {
            title: "Kubernetes".into(),
            version: crate::api::discovery::KUBE_VERSION.into(),
        }),
        paths: Some(Paths { path }),
    }
}

/// The document's protobuf bytes.
pub fn protobuf() -> Vec<u8> {
    document().encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protobuf_round_trips_and_declares_each_patch_with_its_gvk_and_field_validation() {
        let doc = Document::decode(protobuf().as_slice()).expect("decodes");
        assert_eq!(doc.swagger, "2.0");
        let paths = doc.paths.unwrap().path;
        let deployment = paths
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .and_then(|p| p.value.as_ref()?.patch.as_ref())
            .expect("the deployments PATCH");
        assert_eq!(deployment.operation_id, "patchAppsV1NamespacedDeployment");
        let gvk = &deployment.vendor_extension[1];
        assert_eq!(gvk.name, "x-kubernetes-group-version-kind");
        let yaml = &gvk.value.as_ref().unwrap().yaml;
        let parsed: std::collections::BTreeMap<String, String> =
            serde_saphyr::from_str(yaml).expect("the extension is YAML");
        assert_eq!(parsed["group"], "apps");
        assert_eq!(parsed["kind"], "Deployment");
        assert_eq!(parsed["version"], "v1");
        let names: Vec<&str> = deployment
            .parameters
            .iter()
            .filter_map(|p| {
                let q = p.parameter.as_ref()?.non_body_parameter.as_ref()?;
                Some(q.query_parameter_sub_schema.as_ref()?.name.as_str())
            })
            .collect();
        assert!(names.contains(&"fieldValidation"), "{names:?}");
        // The core group's empty name must survive YAML as an empty string, not null.
        let node = paths
            .iter()
            .find(|p| p.name == "/api/v1/nodes/{name}")
            .expect("nodes");
        let yaml = &node
            .value
            .as_ref()
            .unwrap()
            .patch
            .as_ref()
            .unwrap()
            .vendor_extension[1]
            .value
            .as_ref()
            .unwrap()
            .yaml;
        let parsed: std::collections::BTreeMap<String, String> =
            serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(parsed["group"], "");
    }
}
