//! The generic resource handler: one code path for every kind in the table.
//!
//! A request path is parsed into a [`Target`] (resource, namespace, name, subresource); the verb
//! picks list / watch / get / create / update / patch / delete / deletecollection, or one of the
//! subresources (`status`, `scale`, `binding`, `log`, `exec`). All writes run inside one registry
//! transaction so preconditions, allocation and the write are atomic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::defaults;
use super::discovery;
use super::object::{Stored, meta_mut, name_suffix, new_uid, now_rfc3339, str_at};
use super::patch::{self, PatchType};
use super::registry::Txn;
use super::resources::{RESOURCES, ResourceType, Subresource, find, id};
use super::selectors::{
    FieldSelector, LabelSelector, Selectors, format_label_selector, format_labels,
};
use super::server::{Api, json_with_type};
use super::service;
use super::status::{ApiError, ApiResult, FieldError, success_status};
use super::strict::{self, FieldValidation};
use super::table::{self, IncludeObject};
use super::validation;
use super::watch::{self, WatchSpec};

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

enum Parsed {
    Doc(Value),
    Target(Target),
}

fn parse_path(path: &str) -> ApiResult<Parsed> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
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
                  sub: Option<Subresource>| Target {
        rt,
        id: rt.id(),
        namespace: ns.map(String::from),
        name: name.map(String::from),
        sub,
        watch_path,
    };
    let t = match rest {
        [r] => target(resource(r)?, None, None, None),
        ["namespaces", ns, r] if find(group, version, r).is_some_and(|rt| rt.namespaced) => {
            target(resource(r)?, Some(ns), None, None)
        }
        ["namespaces", ns, r, name] => {
            let rt = resource(r)?;
            if !rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            target(rt, Some(ns), Some(name), None)
        }
        ["namespaces", ns, r, name, sub] => {
            let rt = resource(r)?;
            target(rt, Some(ns), Some(name), Some(sub_of(rt, sub)?))
        }
        [r, name] => {
            let rt = resource(r)?;
            if rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            target(rt, None, Some(name), None)
        }
        [r, name, sub] => {
            let rt = resource(r)?;
            if rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            target(rt, None, Some(name), Some(sub_of(rt, sub)?))
        }
        _ => return Err(ApiError::path_not_found()),
    };
    Ok(Parsed::Target(t))
}

/// Query parameters (repeated keys kept).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
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
    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
    /// The raw pairs.
    pub fn raw(&self) -> &[(String, String)] {
        &self.0
    }
    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// The entry point for everything under `/api` and `/apis`.
pub async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    match route(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// How a response object is rendered.
#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    Table(IncludeObject),
}

fn format(headers: &HeaderMap, q: &Query) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let wants_table = accept.split(',').any(|m| {
        let m = m.replace(' ', "");
        m.contains("as=Table") && m.contains("g=meta.k8s.io")
    });
    if wants_table {
        Format::Table(IncludeObject::parse(q.get("includeObject")))
    } else {
        Format::Json
    }
}

async fn route(api: Arc<Api>, req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let t = match parse_path(&path)? {
        Parsed::Doc(doc) => return Ok(json_with_type(StatusCode::OK, "application/json", &doc)),
        Parsed::Target(t) => t,
    };
    let method = req.method().clone();
    let headers = req.headers().clone();
    let fmt = format(&headers, &q);
    match (&method, &t.name, t.sub) {
        (&Method::GET, None, _) if t.watch_path || q.flag("watch") => watch(&api, &t, &q, fmt),
        (&Method::GET, None, _) => list(&api, &t, &q, fmt),
        (&Method::GET, Some(_), Some(Subresource::Log)) => super::pods::logs(&api, &t, &q).await,
        (_, Some(_), Some(Subresource::Exec)) => super::pods::exec(api.clone(), &t, &q, req).await,
        (&Method::GET, Some(_), _) if t.watch_path => {
            let mut q = q;
            q.0.push((
                "fieldSelector".into(),
                format!("metadata.name={}", t.name.as_deref().unwrap_or_default()),
            ));
            let coll = Target {
                name: None,
                ..t.clone()
            };
            watch(&api, &coll, &q, fmt)
        }
        (&Method::GET, Some(_), Some(Subresource::Scale)) => {
            let obj = get_stored(&api, &t)?;
            Ok(json_response(StatusCode::OK, &scale_of(&t, &obj.value())))
        }
        (&Method::GET, Some(_), _) => {
            let obj = get_stored(&api, &t)?;
            Ok(object_response(StatusCode::OK, &t, &obj, fmt, Vec::new()))
        }
        (&Method::POST, None, None) => {
            let body = read_json(req).await?;
            create(&api, &t, body, &q, fmt)
        }
        (&Method::POST, Some(_), Some(Subresource::Binding)) => {
            let body = read_json(req).await?;
            super::pods::bind(&api, &t, &body, &q)
        }
        (&Method::PUT, Some(_), _) => {
            let body = read_json(req).await?;
            update(&api, &t, body, &q, fmt)
        }
        (&Method::PATCH, Some(_), _) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let ty = PatchType::from_content_type(&content_type)?;
            let bytes = read_bytes(req).await?;
            let body = patch::parse_body(&bytes)?;
            patch_object(&api, &t, ty, body, &q, fmt)
        }
        (&Method::DELETE, Some(_), None) => {
            let bytes = read_bytes(req).await?;
            delete(&api, &t, &bytes, &q, fmt)
        }
        (&Method::DELETE, None, None) => {
            let bytes = read_bytes(req).await?;
            delete_collection(&api, &t, &bytes, &q)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    }
}

async fn read_bytes(req: Request) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

async fn read_json(req: Request) -> ApiResult<Value> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if content_type.contains("cbor") {
        return Err(ApiError::unsupported_body(format!(
            "kemu accepts JSON, YAML and protobuf request bodies only (got {content_type}); use a manifest with `kubectl create -f`"
        )));
    }
    let bytes = read_bytes(req).await?;
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return super::protobuf::decode_body(&bytes);
    }
    patch::parse_body(&bytes)
}

/// A JSON response from a value.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    json_with_type(status, "application/json", body)
}

fn bytes_response(status: StatusCode, body: Vec<u8>, warnings: Vec<String>) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(&w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

fn object_response(
    status: StatusCode,
    t: &Target,
    obj: &Stored,
    fmt: Format,
    warnings: Vec<String>,
) -> Response {
    match fmt {
        Format::Json => bytes_response(status, obj.json.to_vec(), warnings),
        Format::Table(include) => {
            let value = obj.value();
            let tbl = table::table(
                t.id,
                [&value],
                include,
                &obj.rv.to_string(),
                jiff::Timestamp::now(),
            );
            bytes_response(
                status,
                serde_json::to_vec(&tbl).expect("serialisable"),
                warnings,
            )
        }
    }
}

fn value_response(
    status: StatusCode,
    t: &Target,
    obj: &Value,
    fmt: Format,
    warnings: Vec<String>,
) -> Response {
    let rv: u64 = str_at(obj, "/metadata/resourceVersion")
        .parse()
        .unwrap_or(0);
    object_response(status, t, &Stored::new(t.rt, obj, rv), fmt, warnings)
}

fn not_found(t: &Target) -> ApiError {
    ApiError::not_found(&t.rt.qualified(), t.name.as_deref().unwrap_or_default())
}

fn ns_of(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or_default()
}

fn get_stored(api: &Api, t: &Target) -> ApiResult<Arc<Stored>> {
    api.registry
        .get(t.id, ns_of(t), t.name.as_deref().unwrap_or_default())
        .ok_or_else(|| not_found(t))
}

fn selectors(t: &Target, q: &Query) -> ApiResult<Selectors> {
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), t.rt)?,
    })
}

fn list(api: &Api, t: &Target, q: &Query, fmt: Format) -> ApiResult<Response> {
    let sel = selectors(t, q)?;
    let (objects, rv) = api.registry.list(t.id, t.namespace.as_deref());
    let objects: Vec<&Arc<Stored>> = objects.iter().filter(|o| sel.matches(o)).collect();
    let body = match fmt {
        Format::Table(include) => {
            let values: Vec<Value> = objects.iter().map(|o| o.value()).collect();
            serde_json::to_vec(&table::table(
                t.id,
                &values,
                include,
                &rv.to_string(),
                jiff::Timestamp::now(),
            ))
            .expect("serialisable")
        }
        Format::Json => {
            let size: usize = objects.iter().map(|o| o.json.len() + 1).sum();
            let mut out = Vec::with_capacity(size + 128);
            out.extend_from_slice(
                format!(
                    "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"}},\"items\":[",
                    t.rt.list_kind(),
                    t.rt.api_version()
                )
                .as_bytes(),
            );
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&o.json);
            }
            out.extend_from_slice(b"]}");
            out
        }
    };
    Ok(bytes_response(StatusCode::OK, body, Vec::new()))
}

fn watch(api: &Api, t: &Target, q: &Query, fmt: Format) -> ApiResult<Response> {
    let sel = selectors(t, q)?;
    let initial_events = q.flag("sendInitialEvents");
    let since = match q.get("resourceVersion") {
        _ if initial_events => None,
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    let spec = WatchSpec {
        rt: t.id,
        namespace: t.namespace.clone(),
        selectors: sel,
        table: match fmt {
            Format::Table(include) => Some(include),
            Format::Json => None,
        },
        timeout: q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        initial_events_bookmark: initial_events,
    };
    let body = match api.registry.watch(t.id, t.namespace.as_deref(), since) {
        Ok((start, rx, rv)) => Body::from_stream(watch::stream(spec, start, rx, rv)),
        Err(e) if e.code == 410 => Body::from_stream(watch::expired_stream(e.message)),
        Err(e) => return Err(e),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Check kind/apiVersion, strict fields, and fill in type metadata.
fn decode(t: &Target, body: &mut Value, q: &Query) -> ApiResult<Vec<String>> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = t.rt.api_version();
    if let Some(v) = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        && v != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(k) = map
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        && k != t.rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "{k} in version \"{}\" cannot be handled as a {}: the kind in the data ({k}) does not match the expected kind ({})",
            t.rt.version, t.rt.kind, t.rt.kind
        )));
    }
    map.insert("apiVersion".into(), json!(api_version));
    map.insert("kind".into(), json!(t.rt.kind));
    check_fields(t, body, q)
}

/// Strict field validation of a full object: error, warnings, and unknown fields dropped.
fn check_fields(t: &Target, obj: &mut Value, q: &Query) -> ApiResult<Vec<String>> {
    let mode = FieldValidation::parse(q.get("fieldValidation"));
    match strict::unknown_fields(t.id, obj) {
        Ok(unknown) if unknown.is_empty() => Ok(Vec::new()),
        Ok(unknown) => {
            strict::drop_fields(obj, &unknown);
            match mode {
                FieldValidation::Strict => Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {}",
                    t.rt.kind,
                    t.rt.version,
                    t.rt.kind,
                    strict::message(&unknown)
                ))),
                FieldValidation::Warn => Ok(unknown
                    .iter()
                    .map(|f| format!("unknown field {:?}", f.path))
                    .collect()),
                FieldValidation::Ignore => Ok(Vec::new()),
            }
        }
        Err(decode_error) => {
            // Go decodes what serde rejects for missing required fields; validation names them.
            let errs = validation::validate(t.id, obj, None);
            if !errs.is_empty() {
                return Err(invalid(t, obj, &errs));
            }
            Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {decode_error}",
                t.rt.kind, t.rt.version, t.rt.kind
            )))
        }
    }
}

fn invalid(t: &Target, obj: &Value, errs: &[FieldError]) -> ApiError {
    ApiError::invalid(t.rt.kind, t.rt.group, str_at(obj, "/metadata/name"), errs)
}

fn check_namespace(txn: &Txn<'_>, t: &Target, name: &str) -> ApiResult<()> {
    if !t.rt.namespaced {
        return Ok(());
    }
    let ns = ns_of(t);
    match txn.get(id::NAMESPACES, "", ns) {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(n)
            if n.value()
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()) =>
        {
            Err(ApiError::forbidden(
                &t.rt.qualified(),
                name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Resources whose status is set by controllers: writes to the main resource keep the old
/// status, and a new object starts with an empty (or initial) status.
fn resets_status(rt: usize) -> bool {
    rt != id::NODES && RESOURCES[rt].has(Subresource::Status)
}

fn create(api: &Api, t: &Target, mut body: Value, q: &Query, fmt: Format) -> ApiResult<Response> {
    let warnings = decode(t, &mut body, q)?;
    let (code, obj) = api.registry.txn(|txn| create_in(txn, t, body, q))?;
    Ok(value_response(code, t, &obj, fmt, warnings))
}

fn create_in(
    txn: &mut Txn<'_>,
    t: &Target,
    mut obj: Value,
    q: &Query,
) -> ApiResult<(StatusCode, Value)> {
    let ns = ns_of(t).to_string();
    {
        let meta = meta_mut(&mut obj);
        if t.rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
    }
    // generateName
    if str_at(&obj, "/metadata/name").is_empty() {
        let prefix = str_at(&obj, "/metadata/generateName").to_string();
        if !prefix.is_empty() {
            let name = loop {
                let candidate = format!("{prefix}{}", name_suffix(txn.rng()));
                if txn.get(t.id, &ns, &candidate).is_none() {
                    break candidate;
                }
            };
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
    }
    let name = str_at(&obj, "/metadata/name").to_string();
    let uid = new_uid(txn.rng());
    {
        let generation = t.rt.generation;
        let meta = meta_mut(&mut obj);
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    if resets_status(t.id)
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    defaults::apply(t.id, &mut obj);
    defaults::initial_status(t.id, &mut obj);
    let errs = validation::validate(t.id, &obj, None);
    if !errs.is_empty() {
        return Err(invalid(t, &obj, &errs));
    }
    check_namespace(txn, t, &name)?;
    if txn.get(t.id, &ns, &name).is_some() {
        return Err(ApiError::already_exists(&t.rt.qualified(), &name));
    }
    let allocation = if t.id == id::SERVICES {
        let (alloc, rng) = txn.alloc_rng();
        Some(
            service::allocate(alloc, rng, &mut obj, None)
                .map_err(|errs| invalid(t, &obj, &errs))?,
        )
    } else {
        None
    };
    if q.dry_run() {
        if let Some(a) = allocation {
            a.undo(txn.alloc());
        }
        return Ok((StatusCode::CREATED, obj));
    }
    let stored = txn.put(t.id, obj)?;
    if let Some(a) = allocation {
        a.commit(txn.alloc());
    }
    Ok((StatusCode::CREATED, stored.value()))
}

/// Turn a proposed full object into the next version of `current` and store it.
fn update_in(
    txn: &mut Txn<'_>,
    t: &Target,
    current: &Stored,
    mut new: Value,
    q: &Query,
) -> ApiResult<(StatusCode, Value)> {
    let old = current.value();
    let name = current.name.to_string();
    let client_rv = str_at(&new, "/metadata/resourceVersion").to_string();
    if !client_rv.is_empty() && client_rv != current.rv.to_string() {
        return Err(ApiError::conflict(
            &t.rt.qualified(),
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if t.sub == Some(Subresource::Status) {
        // Only the status changes through the status subresource.
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
    } else if resets_status(t.id) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
    }
    {
        let old_meta = old
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let meta = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    meta.insert(k.into(), v.clone());
                }
                None => {
                    meta.remove(k);
                }
            }
        }
        meta.insert("resourceVersion".into(), json!(current.rv.to_string()));
    }
    if t.id == id::SERVICES {
        service::carry_over(&mut new, &old);
    }
    defaults::apply(t.id, &mut new);
    let errs = validation::validate(t.id, &new, Some(&old));
    if !errs.is_empty() {
        return Err(invalid(t, &new, &errs));
    }
    if t.rt.generation && t.sub.is_none() && new.get("spec") != old.get("spec") {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta_mut(&mut new).insert("generation".into(), json!(generation));
    }
    let allocation = if t.id == id::SERVICES && t.sub.is_none() {
        let (alloc, rng) = txn.alloc_rng();
        Some(
            service::allocate(alloc, rng, &mut new, Some(&old))
                .map_err(|errs| invalid(t, &new, &errs))?,
        )
    } else {
        None
    };
    if q.dry_run() {
        if let Some(a) = allocation {
            a.undo(txn.alloc());
        }
        return Ok((StatusCode::OK, new));
    }
    if new == old {
        return Ok((StatusCode::OK, old));
    }
    if let Some(a) = allocation {
        a.commit(txn.alloc());
    }
    if finalized(&new) {
        let last = remove(txn, t.id, &current.namespace, &name)?;
        return Ok((StatusCode::OK, last));
    }
    Ok((StatusCode::OK, txn.put(t.id, new)?.value()))
}

/// Being deleted, with no finalizers left and no grace period running.
fn finalized(obj: &Value) -> bool {
    let deleting = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let finalizers = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    deleting && !finalizers && grace == 0
}

/// Remove an object for good, releasing what it holds.
fn remove(txn: &mut Txn<'_>, rt: usize, ns: &str, name: &str) -> ApiResult<Value> {
    let Some(last) = txn.delete(rt, ns, name)? else {
        return Err(ApiError::not_found(&RESOURCES[rt].qualified(), name));
    };
    let value = last.value();
    if rt == id::SERVICES {
        service::release(txn.alloc(), &value);
    }
    Ok(value)
}

fn check_name(t: &Target, obj: &Value) -> ApiResult<()> {
    let body_name = str_at(obj, "/metadata/name");
    let url_name = t.name.as_deref().unwrap_or_default();
    if !body_name.is_empty() && body_name != url_name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
        )));
    }
    Ok(())
}

/// Kinds a PUT may create (the real server's `AllowCreateOnUpdate`).
fn create_on_update(rt: usize) -> bool {
    matches!(
        rt,
        id::ENDPOINTS | id::EVENTS | id::LEASES | id::ENDPOINT_SLICES
    )
}

fn update(api: &Api, t: &Target, mut body: Value, q: &Query, fmt: Format) -> ApiResult<Response> {
    if t.sub == Some(Subresource::Scale) {
        return update_scale(api, t, body, q);
    }
    let warnings = decode(t, &mut body, q)?;
    check_name(t, &body)?;
    let name = t.name.clone().unwrap_or_default();
    let (code, obj) = api
        .registry
        .txn(|txn| match txn.get(t.id, ns_of(t), &name) {
            Some(current) => update_in(txn, t, &current, body, q),
            None if create_on_update(t.id) && t.sub.is_none() => create_in(txn, t, body, q),
            None => Err(not_found(t)),
        })?;
    Ok(value_response(code, t, &obj, fmt, warnings))
}

fn patch_object(
    api: &Api,
    t: &Target,
    ty: PatchType,
    body: Value,
    q: &Query,
    fmt: Format,
) -> ApiResult<Response> {
    if t.sub == Some(Subresource::Scale) {
        return patch_scale(api, t, ty, body, q);
    }
    let name = t.name.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let (code, obj) = api.registry.txn(|txn| {
        let Some(current) = txn.get(t.id, ns_of(t), &name) else {
            if ty == PatchType::Apply && t.sub.is_none() {
                // Server-side apply creates what is absent.
                let mut obj = body.clone();
                warnings = decode(t, &mut obj, q)?;
                check_name(t, &obj)?;
                set_managed_fields(&mut obj, t, q, &body);
                return create_in(txn, t, obj, q);
            }
            return Err(not_found(t));
        };
        let mut patched = patch::apply_patch(ty, t.rt.kind, &current.value(), &body)?;
        if ty == PatchType::Apply {
            set_managed_fields(&mut patched, t, q, &body);
        }
        warnings = check_fields(t, &mut patched, q)?;
        // A patch that does not name a resourceVersion has no precondition.
        if body.pointer("/metadata/resourceVersion").is_none() {
            meta_mut(&mut patched).insert("resourceVersion".into(), json!(current.rv.to_string()));
        }
        update_in(txn, t, &current, patched, q)
    })?;
    Ok(value_response(code, t, &obj, fmt, warnings))
}

/// Minimal `managedFields` for server-side apply: one `Apply` entry per field manager, listing
/// the fields of the applied configuration.
fn set_managed_fields(obj: &mut Value, t: &Target, q: &Query, applied: &Value) {
    fn fields(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    if matches!(k.as_str(), "apiVersion" | "kind") {
                        continue;
                    }
                    out.insert(format!("f:{k}"), fields(v));
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
    let manager = q.get("fieldManager").unwrap_or("kubectl").to_string();
    let mut fv1 = fields(applied);
    if let Some(m) = fv1.get_mut("f:metadata").and_then(Value::as_object_mut) {
        for k in ["f:name", "f:namespace", "f:resourceVersion"] {
            m.remove(k);
        }
    }
    let entry = json!({"manager": manager, "operation": "Apply", "apiVersion": t.rt.api_version(),
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fv1});
    let meta = meta_mut(obj);
    let list = meta.entry("managedFields").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|e| {
            !(e.get("manager") == Some(&json!(manager))
                && e.get("operation") == Some(&json!("Apply")))
        });
        list.push(entry);
    } else {
        *list = json!([entry]);
    }
}

// ----- scale -----

fn scale_of(t: &Target, obj: &Value) -> Value {
    let selector = if t.id == id::REPLICATION_CONTROLLERS {
        format_labels(obj.pointer("/spec/selector").and_then(Value::as_object))
    } else {
        format_label_selector(obj.pointer("/spec/selector"))
    };
    let selector = if selector == "<none>" {
        String::new()
    } else {
        selector
    };
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn apply_scale(
    api: &Api,
    t: &Target,
    q: &Query,
    scale_for: impl FnOnce(&Value) -> ApiResult<Value>,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let parent_target = Target {
        sub: None,
        ..t.clone()
    };
    let (_, obj) = api.registry.txn(|txn| {
        let current = txn.get(t.id, ns_of(t), &name).ok_or_else(|| not_found(t))?;
        let parent = current.value();
        let scale = scale_for(&scale_of(t, &parent))?;
        let rv = str_at(&scale, "/metadata/resourceVersion");
        if !rv.is_empty() && rv != current.rv.to_string() {
            return Err(ApiError::conflict(
                &t.rt.qualified(),
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                &name,
                &[FieldError::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
            ));
        }
        let mut updated = parent.clone();
        updated["spec"]["replicas"] = json!(replicas);
        update_in(txn, &parent_target, &current, updated, q)
    })?;
    Ok(json_response(StatusCode::OK, &scale_of(t, &obj)))
}

fn update_scale(api: &Api, t: &Target, body: Value, q: &Query) -> ApiResult<Response> {
    apply_scale(api, t, q, |_| Ok(body))
}

fn patch_scale(
    api: &Api,
    t: &Target,
    ty: PatchType,
    body: Value,
    q: &Query,
) -> ApiResult<Response> {
    apply_scale(api, t, q, |scale| {
        let mut patched = patch::apply_patch(ty, "Scale", scale, &body)?;
        if body.pointer("/metadata/resourceVersion").is_none() {
            patched["metadata"]["resourceVersion"] = json!("");
        }
        Ok(patched)
    })
}

// ----- delete -----

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Default)]
struct DeleteOptions {
    grace: Option<i64>,
    policy: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

fn delete_options(body: &[u8], q: &Query) -> ApiResult<DeleteOptions> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        patch::parse_body(body)?
    };
    let mut o = DeleteOptions {
        grace: v.get("gracePeriodSeconds").and_then(Value::as_i64),
        policy: v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from),
        uid: v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        resource_version: v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        dry_run: v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"))
            || q.dry_run(),
    };
    if o.grace.is_none() {
        o.grace = q.get("gracePeriodSeconds").and_then(|s| s.parse().ok());
    }
    if o.policy.is_none() {
        o.policy = q.get("propagationPolicy").map(String::from);
    }
    let orphan = v
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| q.get("orphanDependents").map(|s| s == "true"));
    if o.policy.is_none() && orphan == Some(true) {
        o.policy = Some("Orphan".into());
    }
    if let Some(p) = &o.policy
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            &[FieldError::not_supported(
                "propagationPolicy",
                p.as_str(),
                &["Foreground", "Background", "Orphan", "nil"],
            )],
        ));
    }
    Ok(o)
}

fn delete(api: &Api, t: &Target, body: &[u8], q: &Query, fmt: Format) -> ApiResult<Response> {
    let opts = delete_options(body, q)?;
    let name = t.name.clone().unwrap_or_default();
    let (code, obj) = api.registry.txn(|txn| delete_in(txn, t, &name, &opts))?;
    Ok(value_response(code, t, &obj, fmt, Vec::new()))
}

const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

fn delete_in(
    txn: &mut Txn<'_>,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<(StatusCode, Value)> {
    let ns = ns_of(t).to_string();
    let current = txn
        .get(t.id, &ns, name)
        .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name))?;
    let mut obj = current.value();
    let uid = str_at(&obj, "/metadata/uid").to_string();
    if let Some(want) = &opts.uid
        && *want != uid
    {
        return Err(ApiError::conflict(
            &t.rt.qualified(),
            name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    if let Some(want) = &opts.resource_version
        && *want != current.rv.to_string()
    {
        return Err(ApiError::conflict(
            &t.rt.qualified(),
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                current.rv
            ),
        ));
    }
    if t.id == id::NAMESPACES {
        if PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                "namespaces",
                name,
                "this namespace may not be deleted",
            ));
        }
        if opts.dry_run {
            return Ok((StatusCode::OK, obj));
        }
        // Delete the namespace's content, then the namespace (the real namespace controller's job).
        for (rt, r) in RESOURCES.iter().enumerate() {
            if !r.namespaced {
                continue;
            }
            for o in txn.list(rt, Some(name)) {
                remove(txn, rt, name, &o.name)?;
            }
        }
        return Ok((StatusCode::OK, remove(txn, t.id, "", name)?));
    }
    // Finalizers asked for by the propagation policy (the garbage collector removes them).
    let mut finalizers: Vec<Value> = obj
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted = match opts.policy.as_deref() {
        Some("Orphan") => Some("orphan"),
        Some("Foreground") => Some("foregroundDeletion"),
        _ => None,
    };
    if let Some(f) = wanted
        && !finalizers.contains(&json!(f))
    {
        finalizers.push(json!(f));
    }
    // Graceful deletion of pods that run on a node.
    let mut grace = 0i64;
    if t.id == id::PODS {
        let phase = str_at(&obj, "/status/phase");
        let bound = !str_at(&obj, "/spec/nodeName").is_empty();
        let default = obj
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        grace = opts.grace.unwrap_or(default).max(0);
        if !bound || phase == "Succeeded" || phase == "Failed" {
            grace = 0;
        }
    }
    let already = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let current_grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if grace == 0 && finalizers.is_empty() {
        if opts.dry_run {
            return Ok((StatusCode::OK, obj));
        }
        return Ok((StatusCode::OK, remove(txn, t.id, &ns, name)?));
    }
    // The object stays, marked for deletion.
    let shorter = current_grace.is_none_or(|g| grace < g);
    {
        let meta = meta_mut(&mut obj);
        if !already || shorter {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
            meta.insert(
                "deletionTimestamp".into(),
                json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        if !finalizers.is_empty() {
            meta.insert("finalizers".into(), json!(finalizers));
        }
    }
    if opts.dry_run {
        return Ok((StatusCode::ACCEPTED, obj));
    }
    if obj == current.value() {
        return Ok((StatusCode::ACCEPTED, obj));
    }
    Ok((StatusCode::ACCEPTED, txn.put(t.id, obj)?.value()))
}

fn delete_collection(api: &Api, t: &Target, body: &[u8], q: &Query) -> ApiResult<Response> {
    let opts = delete_options(body, q)?;
    let sel = selectors(t, q)?;
    let items = api.registry.txn(|txn| {
        let mut items = Vec::new();
        for o in txn.list(t.id, t.namespace.as_deref()) {
            if !sel.matches(&o) {
                continue;
            }
            let target = Target {
                namespace: Some(o.namespace.to_string()),
                ..t.clone()
            };
            let (_, obj) = delete_in(txn, &target, &o.name, &opts)?;
            items.push(obj);
        }
        Ok(items)
    })?;
    let rv = api.registry.rv();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": t.rt.list_kind(), "apiVersion": t.rt.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

/// `Status{Success}` for writes that answer no object (bindings).
pub fn success(details: Value) -> Response {
    (StatusCode::CREATED, axum::Json(success_status(details))).into_response()
}

/// Used by the pods module to run a status-style update of a pod.
pub fn bind_in(txn: &mut Txn<'_>, t: &Target, node: &str, q: &Query) -> ApiResult<()> {
    let name = t.name.clone().unwrap_or_default();
    let current = txn.get(t.id, ns_of(t), &name).ok_or_else(|| not_found(t))?;
    let mut pod = current.value();
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::conflict(
            "pods",
            &name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let assigned = str_at(&pod, "/spec/nodeName");
    if !assigned.is_empty() {
        return Err(ApiError::conflict(
            "pods",
            &name,
            &format!("pod {name} is already assigned to node {assigned:?}"),
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    let conditions = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    if let Some(conditions) = conditions {
        conditions.retain(|c| str_at(c, "/type") != "PodScheduled");
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
    }
    if q.dry_run() {
        return Ok(());
    }
    txn.put(t.id, pod)?;
    Ok(())
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
            Err(e) => format!("error {}", e.code),
        }
    }

    #[test]
    fn paths() {
        let cases = [
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/api/v1/pods",
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
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:50} {}", describe(c)))
            .collect();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out.join("\n")));
    }
}
