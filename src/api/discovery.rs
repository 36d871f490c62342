//! Discovery documents, built from the kind table: legacy (`/api`, `/apis`, `/api/v1`,
//! `/apis/<g>/<v>`) and aggregated (`apidiscovery.k8s.io` v2 and v2beta1), plus `/version`.
//!
//! Aggregated discovery is answered only when the Accept header asks for it, in the version asked
//! for, with the exact Content-Type kubectl checks; kubectl 1.27-1.29 ask only for v2beta1.

use serde_json::{Value, json};

use super::resources::{RESOURCES, ResourceType, groups, in_group};

/// The Kubernetes version reported by `/version` (the kubectl dispatcher picks its kubectl by it).
pub const KUBE_VERSION: &str = "v1.32.4";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": KUBE_VERSION,
        "gitCommit": "kemu",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The aggregated discovery version the client accepts, in its order of preference.
pub fn negotiate_aggregated(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or_default();
        if mime != "application/json" {
            continue;
        }
        let (mut g, mut v, mut as_) = ("", "", "");
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                Some(("as", x)) => as_ = x,
                _ => {}
            }
        }
        if g == "apidiscovery.k8s.io" && as_ == "APIGroupDiscoveryList" {
            match v {
                "v2" => return Some("v2"),
                "v2beta1" => return Some("v2beta1"),
                _ => {}
            }
        }
    }
    None
}

/// The Content-Type of an aggregated answer in version `v`.
pub fn aggregated_content_type(v: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList")
}

/// Legacy `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Legacy `GET /apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `GET /apis/<g>` (one group).
pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

fn with_lists(mut entry: Value, r: &ResourceType) -> Value {
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    entry
}

/// Legacy `GET /api/v1` or `/apis/<g>/<v>`; `None` for an unknown group-version.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in in_group(group, version) {
        resources.push(with_lists(
            json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs()}),
            r,
        ));
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, sub.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": sub.verbs(),
            });
            if let Some((g, v, k)) = sub.response_kind() {
                entry["kind"] = json!(k);
                if g != r.group {
                    entry["group"] = json!(g);
                    entry["version"] = json!(v);
                }
            }
            resources.push(entry);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_resource(r: &ResourceType) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (g, v, k) = sub.response_kind().unwrap_or((r.group, r.version, r.kind));
            json!({"subresource": sub.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub.verbs()})
        })
        .collect();
    let mut entry = with_lists(
        json!({
            "resource": r.plural,
            "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular,
            "verbs": r.verbs(),
        }),
        r,
    );
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = in_group(group, version).map(aggregated_resource).collect();
    json!({
        "metadata": {"name": group, "creationTimestamp": null},
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated `GET /api` (core group) or `GET /apis` (named groups) in version `v`.
pub fn aggregated(core: bool, v: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("", "v1")]
    } else {
        groups()
            .into_iter()
            .map(|(g, ver)| aggregated_group(g, ver))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{v}"), "metadata": {}, "items": items})
}

/// Every resource, for tests and the OpenAPI document.
pub fn all() -> &'static [ResourceType] {
    RESOURCES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let new = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let old = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate_aggregated(new), Some("v2"));
        assert_eq!(negotiate_aggregated(old), Some("v2beta1"));
        assert_eq!(negotiate_aggregated("application/json, */*"), None);
        assert_eq!(negotiate_aggregated(""), None);
    }

    #[test]
    fn documents() {
        let out = format!(
            "{}\n{}\n{}\n{}\n{}",
            serde_json::to_string_pretty(&api_group_list()).unwrap(),
            serde_json::to_string_pretty(&api_resource_list("", "v1").unwrap()).unwrap(),
            serde_json::to_string_pretty(&api_resource_list("apps", "v1").unwrap()).unwrap(),
            serde_json::to_string_pretty(&aggregated(true, "v2")).unwrap(),
            serde_json::to_string_pretty(&aggregated(false, "v2beta1")).unwrap(),
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }
}
