//! What a request under `/api` and `/apis` addresses and asks for: the path as a [`Target`]
//! (resource, namespace, name, subresource), the query, and the answer's format from `Accept`.
//! Shared by the generic handler ([`super::rest`]) and the pod subresources ([`super::pods`]).
//!
//! Path segments are percent-decoded, then checked like kube-apiserver's storage keys
//! (`path.IsValidPathSegmentName`): a name or namespace of `.` or `..`, or one with `/` or `%`,
//! is a 400; an empty segment in the middle (`namespaces//pods`) is a path the server does not
//! serve. So a path written to climb out of its place (`namespaces/../../etc/pods`, sent as is by
//! `curl --path-as-is`) is never read as some other resource.

use axum::http::{HeaderMap, header};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::discovery;
use super::resources::{ResourceType, Subresource, find};
use super::status::{ApiError, ApiResult};
use super::table::IncludeObject;

/// What a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub rt: &'static ResourceType,
    pub id: usize,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Subresource>,
    /// Old-style `/api/v1/watch/...` path.
    pub watch_path: bool,
}

impl Target {
    /// The namespace, empty for cluster-scoped resources and all-namespace lists.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    /// `<resource> "<name>" not found` for the addressed object.
    pub fn not_found(&self) -> ApiError {
        ApiError::not_found(
            &self.rt.qualified(),
            self.name.as_deref().unwrap_or_default(),
        )
    }
}

/// A parsed path: a discovery document or a resource target.
pub enum Parsed {
    Doc(Value),
    Target(Target),
}

/// Why `name` cannot be a path segment (apimachinery's `IsValidPathSegmentName`), or nothing.
pub fn path_segment_problems(name: &str) -> Vec<&'static str> {
    match name {
        "." => return vec!["may not be '.'"],
        ".." => return vec!["may not be '..'"],
        _ => {}
    }
    let mut problems = Vec::new();
    if name.contains('/') {
        problems.push("may not contain '/'");
    }
    if name.contains('%') {
        problems.push("may not contain '%'");
    }
    problems
}

/// 400 for a name (or namespace) segment that cannot address an object.
fn check_segment(what: &str, value: &str) -> ApiResult<()> {
    let problems = path_segment_problems(value);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "{what} parameter invalid: {value:?}: {}",
        problems.join(";")
    )))
}

/// The decoded segments of `path`, with its leading and trailing slashes dropped.
fn segments(path: &str) -> ApiResult<Vec<String>> {
    path.trim_matches('/')
        .split('/')
        .map(|raw| {
            if raw.is_empty() {
                return Err(ApiError::path_not_found());
            }
            percent_decode_str(raw)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ApiError::path_not_found())
        })
        .collect()
}

/// Parse a path under `/api` or `/apis`.
pub fn parse_path(path: &str) -> ApiResult<Parsed> {
    let segs = segments(path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g] => {
            return discovery::api_group(g)
                .map(Parsed::Doc)
                .ok_or_else(ApiError::path_not_found);
        }
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    if rest.is_empty() {
        return discovery::api_resource_list(group, version)
            .map(Parsed::Doc)
            .ok_or_else(ApiError::path_not_found);
    }
    let (watch_path, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let resource = |plural: &str| find(group, version, plural).ok_or_else(ApiError::path_not_found);
    let namespaced = |plural: &str| {
        resource(plural).and_then(|rt| {
            if rt.namespaced {
                Ok(rt)
            } else {
                Err(ApiError::path_not_found())
            }
        })
    };
    let cluster_scoped = |plural: &str| {
        resource(plural).and_then(|rt| {
            if rt.namespaced {
                Err(ApiError::path_not_found())
            } else {
                Ok(rt)
            }
        })
    };
    let sub_of = |rt: &ResourceType, s: &str| {
        rt.subresources
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .ok_or_else(ApiError::path_not_found)
    };
    let target = |rt: &'static ResourceType,
                  ns: Option<&str>,
                  name: Option<&str>,
                  sub: Option<Subresource>|
     -> ApiResult<Target> {
        // The real server checks names in its storage keys; it leaves the namespace segment
        // alone (client-go refuses a bad one before sending). kemu checks both, so that a
        // namespace of `..` lists nothing rather than something.
        if let Some(ns) = ns {
            check_segment("Namespace", ns)?;
        }
        if let Some(name) = name {
            check_segment("Name", name)?;
        }
        Ok(Target {
            rt,
            id: rt.id(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
            sub,
            watch_path,
        })
    };
    let t = match rest {
        [r] => target(resource(r)?, None, None, None)?,
        ["namespaces", ns, r] if find(group, version, r).is_some_and(|rt| rt.namespaced) => {
            target(resource(r)?, Some(ns), None, None)?
        }
        ["namespaces", ns, r, name] => target(namespaced(r)?, Some(ns), Some(name), None)?,
        ["namespaces", ns, r, name, sub] => {
            let rt = namespaced(r)?;
            target(rt, Some(ns), Some(name), Some(sub_of(rt, sub)?))?
        }
        [r, name] => target(cluster_scoped(r)?, None, Some(name), None)?,
        [r, name, sub] => {
            let rt = cluster_scoped(r)?;
            target(rt, None, Some(name), Some(sub_of(rt, sub)?))?
        }
        _ => return Err(ApiError::path_not_found()),
    };
    Ok(Parsed::Target(t))
}

/// Query parameters (repeated keys kept).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }

    /// Every `(key, value)` pair in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Add a pair (the old watch path turns its name into a field selector).
    pub fn push(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }

    pub fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }

    /// The `resourceVersion` asked for: `None` for unset, empty or `0` (any version will do).
    pub fn resource_version(&self) -> ApiResult<Option<u64>> {
        match self.get("resourceVersion") {
            None | Some("") | Some("0") => Ok(None),
            Some(rv) => rv
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}"))),
        }
    }
}

/// How a response object is rendered.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Json,
    Table(IncludeObject),
}

/// The media types kemu answers objects in (a Table is JSON too).
const SERVED: &[&str] = &["application/json"];

/// The format `Accept` asks for: a Table, JSON, or 406 when it names only media types kemu does
/// not write (protobuf, YAML, CBOR), as kube-apiserver refuses what it cannot write.
pub fn format(headers: &HeaderMap, q: &Query) -> ApiResult<Format> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    let ranges: Vec<String> = accept.split(',').map(|m| m.replace(' ', "")).collect();
    if ranges
        .iter()
        .any(|m| m.contains("as=Table") && m.contains("g=meta.k8s.io"))
    {
        return Ok(Format::Table(IncludeObject::parse(q.get("includeObject"))));
    }
    let essence = |m: &str| m.split(';').next().unwrap_or_default().to_ascii_lowercase();
    if ranges.iter().any(|m| {
        matches!(
            essence(m).as_str(),
            "application/json" | "application/*" | "*/*"
        )
    }) {
        return Ok(Format::Json);
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: {}",
        SERVED.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(path: &str) -> String {
        match parse_path(path) {
            Ok(Parsed::Doc(d)) => format!("doc {}", d["kind"].as_str().unwrap_or_default()),
            Ok(Parsed::Target(t)) => format!(
                "{} ns={:?} name={:?} sub={:?} watch={}",
                t.rt.plural,
                t.namespace,
                t.name,
                t.sub.map(|s| s.name()),
                t.watch_path
            ),
            Err(e) => format!("error {} {}", e.code, e.message),
        }
    }

    #[test]
    fn paths() {
        let cases = [
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/api/v1/pods",
            "/api/v1/pods/",
            "/api/v1/namespaces",
            "/api/v1/namespaces/default",
            "/api/v1/namespaces/default/status",
            "/api/v1/namespaces/default/pods",
            "/api/v1/namespaces/default/pods/p1",
            "/api/v1/namespaces/default/pods/p1/log",
            "/api/v1/namespaces/default/pods/p1/nope",
            "/api/v1/nodes/n1/status",
            "/api/v1/watch/namespaces/default/pods",
            "/apis/apps/v1/namespaces/x/deployments/d/scale",
            "/apis/batch/v1/jobs",
            "/api/v1/namespaces/default/nodes/n1",
            "/api/v1/namespaces/default/nodes/n1/status",
            // Paths that try to leave their place.
            "/api/v1/namespaces/../../etc/pods",
            "/api/v1/namespaces/../pods",
            "/api/v1/namespaces/./pods/p1",
            "/api/v1/namespaces/default/pods/..",
            "/api/v1/namespaces/default/pods/%2E%2E",
            "/api/v1/namespaces/default/pods/a%2Fb",
            "/api/v1/namespaces/default/pods/a%25b/log",
            "/api/v1/namespaces/default/pods/%zz",
            "/api/v1/namespaces/..",
            "/api/v1/nodes/../namespaces",
            "/api/v1/namespaces//pods",
            "/api//v1/pods",
            "/api/v1/watch/namespaces/../pods",
            "/apis/apps/v1/namespaces/default/deployments/../scale",
            "/api/v1/namespaces/default/pods/%70%31",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:56} {}", describe(c)))
            .collect();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out.join("\n")));
    }

    #[test]
    fn accept() {
        let q = Query::default();
        let of = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().unwrap());
            match format(&h, &q) {
                Ok(Format::Json) => "json".to_string(),
                Ok(Format::Table(_)) => "table".to_string(),
                Err(e) => format!("{} {}", e.code, e.message),
            }
        };
        assert!(matches!(format(&HeaderMap::new(), &q), Ok(Format::Json)));
        assert_eq!(of("application/json"), "json");
        assert_eq!(of("application/json;stream=watch"), "json");
        assert_eq!(
            of("application/vnd.kubernetes.protobuf, application/json"),
            "json"
        );
        assert_eq!(of("*/*"), "json");
        assert_eq!(
            of("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            "table"
        );
        assert_eq!(
            of("application/vnd.kubernetes.protobuf"),
            "406 only the following media types are accepted: application/json"
        );
        assert_eq!(
            of("application/yaml"),
            "406 only the following media types are accepted: application/json"
        );
    }

    #[test]
    fn resource_versions() {
        let rv = |q: &str| Query::parse(Some(q)).resource_version();
        assert_eq!(rv(""), Ok(None));
        assert_eq!(rv("resourceVersion=0"), Ok(None));
        assert_eq!(rv("resourceVersion=12"), Ok(Some(12)));
        assert_eq!(rv("resourceVersion=x").unwrap_err().code, 400);
    }
}
