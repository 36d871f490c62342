//! The generic resource handler: one code path for every kind in the table.
//!
//! The request's [`Target`] (from [`super::request`]) and verb pick list / watch / get / create /
//! update / patch / delete / deletecollection, or one of the subresources (`status`, `scale`,
//! `binding`, `log`, `exec`); bodies are read through [`super::body`]. All writes run inside one
//! registry transaction so preconditions, allocation and the write are atomic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::body;
use super::defaults;
use super::managed;
use super::object::{Stored, ensure_map, meta_mut, name_suffix, new_uid, now_rfc3339, str_at};
use super::paging;
use super::patch::{self, PatchType};
use super::registry::Txn;
use super::request::{Format, Parsed, Query, Target, format, parse_path};
use super::resources::{RESOURCES, Subresource, id};
use super::response::json_with_type;
use super::selectors::{
    FieldSelector, LabelSelector, Selectors, format_label_selector, format_labels,
};
use super::server::Api;
use super::service;
use super::status::{ApiError, ApiResult, FieldError};
use super::strict::{self, FieldValidation};
use super::table;
use super::validation;
use super::watch::{self, WatchSpec};

/// How long a read with a resourceVersion the server has not reached waits for it, and when
/// the client is told to retry (kube-apiserver's watch cache: `blockTimeout`,
/// `resourceVersionTooHighRetrySeconds`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);
const FRESHNESS_RETRY_SECONDS: u64 = 1;

/// The entry point for everything under `/api` and `/apis`.
pub async fn handle(State(api): State<Arc<Api>>, req: Request) -> Response {
    match route(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(api: Arc<Api>, req: Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let mut q = Query::parse(req.uri().query());
    if q.get("fieldManager").is_none_or(str::is_empty) {
        // kube's default manager: the User-Agent up to its first '/'.
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let prefix = agent.split('/').next().unwrap_or_default();
        if !prefix.is_empty() {
            q.push("fieldManager", prefix.chars().take(128).collect());
        }
    }
    let t = match parse_path(&path)? {
        Parsed::Doc(doc) => return Ok(json_with_type(StatusCode::OK, "application/json", &doc)),
        Parsed::Target(t) => t,
    };
    let method = req.method().clone();
    let user = super::auth::identify(
        &api.registry,
        &api.tokens,
        req.headers(),
        req.extensions().get::<super::secure::Peer>(),
    )?;
    super::auth::check(&api.registry, &user, &attributes(&t, &method, &q))?;
    if !t.rt.stored {
        return match (&method, &t.name) {
            (&Method::POST, None) => {
                let body = body::object(req).await?;
                super::auth::reviews::review(&api.registry, &api.tokens, &t, body, &user)
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            ))),
        };
    }
    // Logs are text and exec a WebSocket: only the object answers negotiate on Accept.
    let fmt = match t.sub {
        Some(Subresource::Log | Subresource::Exec) => Format::Json,
        _ => format(req.headers(), &q)?,
    };
    // Every body is read through `body`, and so within its size limit.
    match (&method, &t.name, t.sub) {
        (&Method::GET, None, _) if t.watch_path || q.flag("watch") => {
            watch(&api, &t, &q, fmt).await
        }
        (&Method::GET, None, _) => list(&api, &t, &q, fmt).await,
        (&Method::GET, Some(_), Some(Subresource::Log)) => super::pods::logs(&api, &t, &q).await,
        (_, Some(_), Some(Subresource::Exec)) => super::pods::exec(api.clone(), &t, &q, req).await,
        (&Method::GET, Some(name), _) if t.watch_path => {
            let mut q = q;
            q.push("fieldSelector", format!("metadata.name={name}"));
            let coll = Target {
                name: None,
                ..t.clone()
            };
            watch(&api, &coll, &q, fmt).await
        }
        (&Method::GET, Some(_), Some(Subresource::Scale)) => {
            let obj = get_stored(&api, &t, &q).await?;
            Ok(json_response(StatusCode::OK, &scale_of(&t, &obj.value())))
        }
        (&Method::GET, Some(_), _) => {
            let obj = get_stored(&api, &t, &q).await?;
            Ok(object_response(StatusCode::OK, &t, &obj, fmt, Vec::new()))
        }
        (&Method::POST, None, None) => {
            let obj = body::object(req).await?;
            if t.id == id::PODS && api.config.service_account_admission {
                wait_for_default_account(&api, &t, &obj).await;
            }
            create(&api, &t, obj, &q, fmt)
        }
        (&Method::POST, Some(_), Some(Subresource::Binding)) => {
            let binding = body::object(req).await?;
            super::pods::bind(&api, &t, &binding, &q)
        }
        (&Method::POST, Some(_), Some(Subresource::Token)) => {
            let request = body::object(req).await?;
            super::auth::reviews::token_request(&api.registry, &api.tokens, &t, request)
        }
        (&Method::POST, Some(_), Some(Subresource::Eviction)) => {
            let eviction = body::object(req).await?;
            super::eviction::evict(&api, &t, &eviction, &q)
        }
        (&Method::PUT, Some(_), _) => {
            let obj = body::object(req).await?;
            update(&api, &t, obj, &q, fmt)
        }
        (&Method::PATCH, Some(_), _) => {
            let (ty, patch) = body::patch(req).await?;
            patch_object(&api, &t, ty, patch, &q, fmt)
        }
        (&Method::DELETE, Some(_), None) => {
            let options = body::optional_object(req).await?;
            delete(&api, &t, options, &q, fmt)
        }
        (&Method::DELETE, None, None) => {
            let options = body::optional_object(req).await?;
            delete_collection(&api, &t, options, &q)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    }
}

/// What the authorizer sees of a request (`RequestInfo`).
fn attributes(t: &Target, method: &Method, q: &Query) -> super::auth::Attributes {
    let watch = t.watch_path || q.flag("watch");
    let verb = match (method, &t.name) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => "unknown",
    };
    // `pods/exec` is asked for with GET (WebSocket) but authorised as create, like kube's.
    let verb = match t.sub {
        Some(Subresource::Exec) => "create",
        _ => verb,
    };
    super::auth::Attributes {
        verb: verb.into(),
        namespace: t.ns().into(),
        group: t.rt.group.into(),
        resource: t.rt.plural.into(),
        subresource: t.sub.map(|s| s.name().to_string()).unwrap_or_default(),
        name: t.name.clone().unwrap_or_default(),
        path: String::new(),
    }
}

/// Wait, as kube-apiserver's watch cache does, for a resourceVersion the client asked for and
/// the registry has not reached: a client can only have it from a store that was further along
/// (an in-memory server that restarted), or be wrong. Not reached in time: "Too large resource
/// version" (504).
async fn wait_until_fresh(api: &Api, q: &Query) -> ApiResult<Option<u64>> {
    let requested = q.resource_version()?;
    if let Some(rv) = requested {
        api.registry
            .wait_for_rv(rv, FRESHNESS_WAIT, FRESHNESS_RETRY_SECONDS)
            .await?;
    }
    Ok(requested)
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

/// GET of one object; a `resourceVersion` asks for that version or a newer one.
async fn get_stored(api: &Api, t: &Target, q: &Query) -> ApiResult<Arc<Stored>> {
    wait_until_fresh(api, q).await?;
    api.registry
        .get(t.id, t.ns(), t.name.as_deref().unwrap_or_default())
        .ok_or_else(|| t.not_found())
}

fn selectors(t: &Target, q: &Query) -> ApiResult<Selectors> {
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or_default(), t.rt)?,
    })
}

async fn list(api: &Api, t: &Target, q: &Query, fmt: Format) -> ApiResult<Response> {
    let sel = selectors(t, q)?;
    let ns = t.namespace.as_deref();
    let limit = match q.get("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}: not an integer")))?
            .max(0) as usize,
    };
    let resume = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => Some(paging::decode(token, ns)?),
    };
    // The first page (or a whole list) is the current state; later pages that of the first.
    let (objects, rv) = match &resume {
        Some(paging::Continue {
            rv: Some(rv),
            after,
        }) => {
            let objects = api
                .registry
                .list_at(t.id, ns, *rv)
                .ok_or_else(|| paging::expired(ns, (&after.0, &after.1)))?;
            (objects, *rv)
        }
        _ => {
            wait_until_fresh(api, q).await?;
            api.registry.list(t.id, ns)
        }
    };
    let page = paging::page(
        objects,
        resume.as_ref().map(|c| &c.after),
        limit,
        ["labelSelector", "fieldSelector"]
            .iter()
            .any(|k| q.get(k).is_some_and(|s| !s.is_empty())),
        |o| sel.matches(o),
    );
    let objects = page.items;
    let next = page
        .more_after
        .map(|(n, name)| paging::encode(Some(rv), ns, (&n, &name)));
    let mut list_meta = json!({"resourceVersion": rv.to_string()});
    if let Some(next) = &next {
        list_meta["continue"] = json!(next);
    }
    if let Some(remaining) = page.remaining {
        list_meta["remainingItemCount"] = json!(remaining);
    }
    let body = match fmt {
        Format::Table(include) => {
            let values: Vec<Value> = objects.iter().map(|o| o.value()).collect();
            let mut table = table::table(
                t.id,
                &values,
                include,
                &rv.to_string(),
                jiff::Timestamp::now(),
            );
            table["metadata"] = list_meta;
            serde_json::to_vec(&table).expect("serialisable")
        }
        Format::Json => {
            let size: usize = objects.iter().map(|o| o.json.len() + 1).sum();
            let mut out = Vec::with_capacity(size + 128);
            out.extend_from_slice(
                format!(
                    "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{list_meta},\"items\":[",
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

async fn watch(api: &Api, t: &Target, q: &Query, fmt: Format) -> ApiResult<Response> {
    let sel = selectors(t, q)?;
    let initial_events = q.flag("sendInitialEvents");
    let requested = q.resource_version()?;
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
    // A watch from a resourceVersion the registry has not reached. kube-apiserver
    // (staging/src/k8s.io/apiserver/pkg/storage/cacher, `Cacher.Watch`): with
    // `sendInitialEvents=true` it waits up to 3 s for its cache to reach that version
    // (`waitUntilWatchCacheFreshAndForceAllEvents`); if it does not, the watch answers 200 with
    // one ERROR event carrying the 504 "Too large resource version" Status and ends (past
    // version parsing, "errors must fail with a watch event of type ERROR"). Without
    // `sendInitialEvents` it neither waits nor fails: the cache watcher starts at the requested
    // version and drops events at or below it, which suits a cache lagging behind etcd. Here the
    // registry is the store itself, so a version it has not reached comes from some other store
    // (an in-memory server that restarted) or from nowhere, and that watch would stay silent
    // until the counter passed it, losing every change in between. So every watch from the
    // future gets the `sendInitialEvents` answer.
    if let Some(rv) = requested
        && let Err(e) = api
            .registry
            .wait_for_rv(rv, FRESHNESS_WAIT, FRESHNESS_RETRY_SECONDS)
            .await
    {
        return Ok(watch_response(Body::from_stream(watch::error_stream(&e))));
    }
    let since = if initial_events { None } else { requested };
    let body = match api.registry.watch(t.id, t.namespace.as_deref(), since) {
        Ok((start, rx, rv)) => Body::from_stream(watch::stream(spec, start, rx, rv)),
        Err(e) if e.code == 410 => Body::from_stream(watch::error_stream(&e)),
        Err(e) => return Err(e),
    };
    Ok(watch_response(body))
}

fn watch_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
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
    let ns = t.ns();
    match txn.get(id::NAMESPACES, "", ns) {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(n)
            if n.value()
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()) =>
        {
            // The NamespaceLifecycle admission plugin; clients (controllers, kubectl drain)
            // recognise the cause.
            Err(ApiError::forbidden(
                &t.rt.qualified(),
                name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )
            .with_cause(
                "NamespaceTerminating",
                &format!("namespace {ns} is being terminated"),
                Some("metadata.namespace"),
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

/// A pod of a namespace made a moment ago may come before the controller made its `default`
/// account: as kube-apiserver's ServiceAccount plugin, look again for up to ten times 100-200 ms
/// before the admission refuses the pod. Other accounts are looked up once.
async fn wait_for_default_account(api: &Api, t: &Target, pod: &Value) {
    if super::admission::account_name(pod) != "default" {
        return;
    }
    for _ in 0..10 {
        if api
            .registry
            .get(id::SERVICE_ACCOUNTS, t.ns(), "default")
            .is_some()
        {
            return;
        }
        let pause = 100 + rand::random::<u64>() % 100;
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
}

fn create(api: &Api, t: &Target, mut body: Value, q: &Query, fmt: Format) -> ApiResult<Response> {
    let warnings = decode(t, &mut body, q)?;
    let manager = updater(t, q);
    let (code, obj) = api
        .registry
        .txn(|txn| create_in(txn, t, body, q, manager.as_ref(), &api.config))?;
    Ok(value_response(code, t, &obj, fmt, warnings))
}

/// Who a write records in `managedFields`: `None` for a server-side apply, which did.
fn updater(t: &Target, q: &Query) -> Option<managed::Manager> {
    Some(managed::Manager {
        name: q.get("fieldManager").unwrap_or("unknown").to_string(),
        operation: "Update".into(),
        subresource: t.sub.map(|s| s.name().to_string()).unwrap_or_default(),
    })
}

/// Record `manager`'s write of `new` (over `old`) in `managedFields`.
fn track(t: &Target, manager: Option<&managed::Manager>, old: Option<&Value>, new: &mut Value) {
    if let Some(m) = manager {
        let skip_status = t.sub.is_none() && resets_status(t.id);
        let now = now_rfc3339();
        managed::track_update(
            t.rt.kind,
            skip_status,
            old,
            new,
            m,
            &t.rt.api_version(),
            &now,
        );
    }
}

fn create_in(
    txn: &mut Txn<'_>,
    t: &Target,
    mut obj: Value,
    q: &Query,
    manager: Option<&managed::Manager>,
    config: &super::server::Config,
) -> ApiResult<(StatusCode, Value)> {
    let ns = t.ns().to_string();
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
    if t.id == id::PERSISTENT_VOLUME_CLAIMS {
        default_storage_class(txn, &mut obj);
    }
    defaults::apply(t.id, &mut obj);
    defaults::initial_status(t.id, &mut obj);
    check_namespace(txn, t, &name)?;
    if t.id == id::PODS && config.service_account_admission {
        let account = txn
            .get(
                id::SERVICE_ACCOUNTS,
                &ns,
                &super::admission::account_name(&obj),
            )
            .map(|s| s.value());
        let suffix = name_suffix(txn.rng());
        super::admission::service_account(&mut obj, account.as_ref(), &suffix)
            .map_err(|why| ApiError::forbidden(&t.rt.qualified(), &name, &why))?;
    }
    let errs = validation::validate(t.id, &obj, None);
    if !errs.is_empty() {
        return Err(invalid(t, &obj, &errs));
    }
    if txn.get(t.id, &ns, &name).is_some() {
        return Err(ApiError::already_exists(&t.rt.qualified(), &name));
    }
    track(t, manager, None, &mut obj);
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

/// The DefaultStorageClass admission plugin: a claim that names no class gets the default
/// one (the newest class annotated `storageclass.kubernetes.io/is-default-class: "true"`), if
/// there is one. A claim with `storageClassName: ""` asks for no class and keeps it.
fn default_storage_class(txn: &Txn<'_>, claim: &mut Value) {
    if claim
        .pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
        || !str_at(
            claim,
            "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
        )
        .is_empty()
    {
        return;
    }
    let default = txn
        .list(id::STORAGE_CLASSES, None)
        .into_iter()
        .map(|c| c.value())
        .filter(|c| {
            str_at(
                c,
                "/metadata/annotations/storageclass.kubernetes.io~1is-default-class",
            ) == "true"
        })
        .max_by(|a, b| {
            str_at(a, "/metadata/creationTimestamp")
                .cmp(str_at(b, "/metadata/creationTimestamp"))
                .then_with(|| str_at(b, "/metadata/name").cmp(str_at(a, "/metadata/name")))
        });
    if let Some(class) = default {
        let name = str_at(&class, "/metadata/name").to_string();
        ensure_map(claim, "spec").insert("storageClassName".into(), json!(name));
    }
}

/// Turn a proposed full object into the next version of `current` and store it.
fn update_in(
    txn: &mut Txn<'_>,
    t: &Target,
    current: &Stored,
    mut new: Value,
    q: &Query,
    manager: Option<&managed::Manager>,
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
    if t.sub == Some(Subresource::Finalize) {
        // Only the namespace's finalizers change through `finalize`.
        let finalizers = new.pointer("/spec/finalizers").cloned();
        new = old.clone();
        match finalizers {
            Some(f) => ensure_map(&mut new, "spec").insert("finalizers".into(), f),
            None => ensure_map(&mut new, "spec").remove("finalizers"),
        };
    } else if t.sub == Some(Subresource::Status) {
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
    track(t, manager, Some(&old), &mut new);
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
    let namespace_held = t.id == id::NAMESPACES
        && new
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    // An update removes an object being deleted when it takes away its last finalizer.
    let had_finalizers = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if finalized(&new) && !namespace_held && (t.id != id::NAMESPACES || had_finalizers) {
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
    let manager = updater(t, q);
    let manager = manager.as_ref();
    let (code, obj) = api.registry.txn(|txn| match txn.get(t.id, t.ns(), &name) {
        Some(current) => update_in(txn, t, &current, body, q, manager),
        None if create_on_update(t.id) && t.sub.is_none() => {
            create_in(txn, t, body, q, manager, &api.config)
        }
        None => Err(t.not_found()),
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
    let applier = q.get("fieldManager").filter(|m| !m.is_empty());
    if ty == PatchType::Apply && applier.is_none() {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    // The status of the main resource is not the applier's (kube resets it).
    let skip_status = t.sub.is_none() && resets_status(t.id);
    let apply = |live: Option<&Value>| {
        let now = now_rfc3339();
        managed::apply(
            t.rt.kind,
            skip_status,
            live,
            &body,
            applier.unwrap_or_default(),
            q.flag("force"),
            &t.rt.api_version(),
            &now,
        )
    };
    let manager = updater(t, q);
    let manager = manager.as_ref();
    let (code, obj) = api.registry.txn(|txn| {
        let Some(current) = txn.get(t.id, t.ns(), &name) else {
            if ty == PatchType::Apply && t.sub.is_none() {
                // Server-side apply creates what is absent.
                let mut obj = body.clone();
                warnings = decode(t, &mut obj, q)?;
                check_name(t, &obj)?;
                let obj = apply(None).map(|mut applied| {
                    // The decoded object, with the applier's managedFields.
                    let fields = applied["metadata"]["managedFields"].take();
                    let mut decoded = obj;
                    meta_mut(&mut decoded).insert("managedFields".into(), fields);
                    decoded
                })?;
                return create_in(txn, t, obj, q, None, &api.config);
            }
            return Err(t.not_found());
        };
        let (mut patched, tracked) = if ty == PatchType::Apply {
            (apply(Some(&current.value()))?, None)
        } else {
            let patched = patch::apply_patch(ty, t.rt.kind, &current.value(), &body)?;
            (patched, manager)
        };
        warnings = check_fields(t, &mut patched, q)?;
        // A patch that does not name a resourceVersion has no precondition.
        if body.pointer("/metadata/resourceVersion").is_none() {
            meta_mut(&mut patched).insert("resourceVersion".into(), json!(current.rv.to_string()));
        }
        update_in(txn, t, &current, patched, q, tracked)
    })?;
    Ok(value_response(code, t, &obj, fmt, warnings))
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
    // Recorded as a write through `scale` (kubectl scale), of the parent's spec.replicas.
    let manager = updater(t, q);
    let (_, obj) = api.registry.txn(|txn| {
        let current = txn.get(t.id, t.ns(), &name).ok_or_else(|| t.not_found())?;
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
        update_in(txn, &parent_target, &current, updated, q, manager.as_ref())
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
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub policy: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

pub fn delete_options(body: Option<Value>, q: &Query) -> ApiResult<DeleteOptions> {
    let v = body.unwrap_or_else(|| json!({}));
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

fn delete(
    api: &Api,
    t: &Target,
    body: Option<Value>,
    q: &Query,
    fmt: Format,
) -> ApiResult<Response> {
    let opts = delete_options(body, q)?;
    let name = t.name.clone().unwrap_or_default();
    let (code, obj) = api.registry.txn(|txn| delete_in(txn, t, &name, &opts))?;
    Ok(value_response(code, t, &obj, fmt, Vec::new()))
}

const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

pub fn delete_in(
    txn: &mut Txn<'_>,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<(StatusCode, Value)> {
    let ns = t.ns().to_string();
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
        return delete_namespace(txn, obj, opts);
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

/// A namespace is deleted in two steps, as kube-apiserver's namespace storage does it: the first
/// DELETE marks it `Terminating` (new content is refused from then on); the namespace controller
/// deletes its content, empties `spec.finalizers` through the `finalize` subresource, and
/// deletes it again, which removes it once no finalizer is left.
fn delete_namespace(
    txn: &mut Txn<'_>,
    mut obj: Value,
    opts: &DeleteOptions,
) -> ApiResult<(StatusCode, Value)> {
    let name = str_at(&obj, "/metadata/name").to_string();
    let has = |obj: &Value, p: &str| {
        obj.pointer(p)
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    };
    let already = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if !already {
        meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(now_rfc3339()));
        ensure_map(&mut obj, "status").insert("phase".into(), json!("Terminating"));
        if let Some(f) = match opts.policy.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        } {
            let meta = meta_mut(&mut obj);
            let list = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut()
                && !list.contains(&json!(f))
            {
                list.push(json!(f));
            }
        }
    }
    if opts.dry_run {
        return Ok((StatusCode::OK, obj));
    }
    if !has(&obj, "/spec/finalizers") && !has(&obj, "/metadata/finalizers") {
        return Ok((StatusCode::OK, remove(txn, id::NAMESPACES, "", &name)?));
    }
    if already {
        return Ok((StatusCode::OK, obj));
    }
    Ok((StatusCode::OK, txn.put(id::NAMESPACES, obj)?.value()))
}

fn delete_collection(api: &Api, t: &Target, body: Option<Value>, q: &Query) -> ApiResult<Response> {
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
