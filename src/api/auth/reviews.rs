//! The objects that are answered, not stored: `SelfSubjectReview` (`kubectl auth whoami`),
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), `SubjectAccessReview`,
//! `LocalSubjectAccessReview`, `SelfSubjectRulesReview` (`kubectl auth can-i --list`),
//! `TokenReview`, and `serviceaccounts/<name>/token` (`TokenRequest`, `kubectl create token`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::token::{self, Subject};
use super::{Attributes, Tokens, User, authenticate_token, decide, rbac};
use crate::api::object::{new_uid, str_at};
use crate::api::registry::{Registry, Txn};
use crate::api::request::Target;
use crate::api::resources::id;
use crate::api::status::{ApiError, ApiResult, FieldError};

/// kube-apiserver's bounds on a requested token lifetime.
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

fn created(body: Value) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// The answer to a POST of a review kind: the review with its `status` filled in.
pub fn review(
    registry: &Registry,
    tokens: &Tokens,
    t: &Target,
    mut body: Value,
    user: &User,
) -> ApiResult<Response> {
    body["apiVersion"] = json!(t.rt.api_version());
    body["kind"] = json!(t.rt.kind);
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    let status = match t.rt.kind {
        "SelfSubjectReview" => json!({"userInfo": user.to_json()}),
        "TokenReview" => {
            let token = str_at(&body, "/spec/token").to_string();
            let audiences = strings(body.pointer("/spec/audiences"));
            let audiences = if audiences.is_empty() {
                tokens.audiences.clone()
            } else {
                audiences
            };
            match registry.txn(|txn| Ok(authenticate_token(tokens, txn, &token, &audiences))) {
                Ok(Ok(u)) => {
                    json!({"authenticated": true, "user": u.to_json(), "audiences": audiences})
                }
                _ => {
                    json!({"authenticated": false, "error": "[invalid bearer token, service account token has been invalidated]"})
                }
            }
        }
        "SelfSubjectAccessReview" => access(registry, user, &body, None)?,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let subject = User {
                name: str_at(&body, "/spec/user").to_string(),
                uid: str_at(&body, "/spec/uid").to_string(),
                groups: strings(body.pointer("/spec/groups")),
                extra: Default::default(),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::invalid(
                    t.rt.kind,
                    t.rt.group,
                    "",
                    &[FieldError::invalid_go(
                        "spec.user,spec.groups",
                        "\"\"",
                        "at least one of user or group must be specified",
                    )],
                ));
            }
            let local = t.rt.namespaced.then(|| t.ns().to_string());
            access(registry, &subject, &body, local)?
        }
        "SelfSubjectRulesReview" => {
            let ns = str_at(&body, "/spec/namespace").to_string();
            registry.txn(|txn| Ok(rules(txn, user, &ns)))?
        }
        other => {
            return Err(ApiError::method_not_allowed(format!(
                "{other} cannot be created"
            )));
        }
    };
    body["status"] = status;
    Ok(created(body))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `status` of an access review of `user`; `local` is a LocalSubjectAccessReview's namespace.
fn access(
    registry: &Registry,
    user: &User,
    body: &Value,
    local: Option<String>,
) -> ApiResult<Value> {
    let a = if let Some(r) = body
        .pointer("/spec/resourceAttributes")
        .filter(|r| r.is_object())
    {
        Attributes {
            verb: str_at(r, "/verb").to_string(),
            namespace: str_at(r, "/namespace").to_string(),
            group: str_at(r, "/group").to_string(),
            resource: str_at(r, "/resource").to_string(),
            subresource: str_at(r, "/subresource").to_string(),
            name: str_at(r, "/name").to_string(),
            path: String::new(),
        }
    } else if let Some(n) = body
        .pointer("/spec/nonResourceAttributes")
        .filter(|r| r.is_object())
    {
        Attributes {
            verb: str_at(n, "/verb").to_string(),
            path: str_at(n, "/path").to_string(),
            ..Attributes::default()
        }
    } else {
        return Err(ApiError::invalid(
            str_at(body, "/kind"),
            "authorization.k8s.io",
            "",
            &[FieldError::invalid_go(
                "spec.resourceAttributes",
                "nil",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    if let Some(ns) = local
        && a.namespace != ns
    {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {ns}"
        )));
    }
    let decision = registry.txn(|txn| Ok(decide(txn, user, &a)))?;
    Ok(match decision {
        rbac::Decision::Allow(reason) if reason.is_empty() => json!({"allowed": true}),
        rbac::Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        rbac::Decision::NoOpinion => json!({"allowed": false}),
    })
}

/// `status` of a SelfSubjectRulesReview: the rules of every role bound to `user` there.
fn rules(txn: &Txn<'_>, user: &User, ns: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let mut bindings: Vec<(Value, String)> = txn
        .list(id::CLUSTER_ROLE_BINDINGS, None)
        .iter()
        .map(|b| (b.value(), String::new()))
        .collect();
    if !ns.is_empty() {
        bindings.extend(
            txn.list(id::ROLE_BINDINGS, Some(ns))
                .iter()
                .map(|b| (b.value(), ns.to_string())),
        );
    }
    for (binding, binding_ns) in bindings {
        // The subject test of the authorizer, on a request nobody could be refused.
        let probe = rbac::Policy {
            cluster_role_bindings: if binding_ns.is_empty() {
                std::slice::from_ref(&binding)
            } else {
                &[]
            },
            role_bindings: if binding_ns.is_empty() {
                &[]
            } else {
                std::slice::from_ref(&binding)
            },
            role: &|_: &str, _: &str, _: &str| {
                Some(json!({"rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]}))
            },
        };
        let a = Attributes {
            verb: "get".into(),
            namespace: binding_ns.clone(),
            resource: "probe".into(),
            ..Attributes::default()
        };
        if rbac::authorize(&probe, user, &a) == rbac::Decision::NoOpinion {
            continue;
        }
        let kind = binding
            .pointer("/roleRef/kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = binding
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let role = match kind {
            "ClusterRole" => txn.get(id::CLUSTER_ROLES, "", name),
            _ => txn.get(id::ROLES, &binding_ns, name),
        };
        for rule in role
            .map(|r| r.value())
            .and_then(|r| r.get("rules").cloned())
            .and_then(|r| r.as_array().cloned())
            .unwrap_or_default()
        {
            if rule
                .get("nonResourceURLs")
                .and_then(Value::as_array)
                .is_some_and(|u| !u.is_empty())
            {
                non_resource_rules.push(
                    json!({"verbs": rule["verbs"], "nonResourceURLs": rule["nonResourceURLs"]}),
                );
            } else {
                resource_rules.push(rule);
            }
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// `POST serviceaccounts/<name>/token`: a token for the service account, bound to a pod or
/// secret if asked, valid for `spec.expirationSeconds` (an hour by default).
pub fn token_request(
    registry: &Registry,
    tokens: &Tokens,
    t: &Target,
    mut body: Value,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.ns().to_string();
    let expiration = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let mut errs = Vec::new();
    if expiration < MIN_EXPIRATION_SECONDS {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration less than 10 minutes",
        ));
    } else if expiration > MAX_EXPIRATION_SECONDS {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            expiration,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let bound_kind = str_at(&body, "/spec/boundObjectRef/kind").to_string();
    if !bound_kind.is_empty() && bound_kind != "Pod" && bound_kind != "Secret" {
        errs.push(FieldError::not_supported(
            "spec.boundObjectRef.kind",
            bound_kind.as_str(),
            &["Pod", "Secret"],
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            &name,
            &errs,
        ));
    }
    let audiences = {
        let a = strings(body.pointer("/spec/audiences"));
        if a.is_empty() {
            tokens.audiences.clone()
        } else {
            a
        }
    };
    let (sa_uid, bound, jti) = registry.txn(|txn| {
        let sa = txn
            .get(id::SERVICE_ACCOUNTS, &ns, &name)
            .ok_or_else(|| ApiError::not_found("serviceaccounts", &name))?
            .value();
        let bound = if bound_kind.is_empty() {
            None
        } else {
            let rt = if bound_kind == "Pod" { id::PODS } else { id::SECRETS };
            let bound_name = str_at(&body, "/spec/boundObjectRef/name").to_string();
            let live = txn
                .get(rt, &ns, &bound_name)
                .ok_or_else(|| ApiError::not_found(if rt == id::PODS { "pods" } else { "secrets" }, &bound_name))?
                .value();
            let uid = str_at(&live, "/metadata/uid").to_string();
            let want = str_at(&body, "/spec/boundObjectRef/uid");
            if !want.is_empty() && want != uid {
                return Err(ApiError::conflict(
                    "serviceaccounts",
                    &name,
                    &format!("the UID in the bound object reference ({want}) does not match the UID in record ({uid})"),
                ));
            }
            Some((bound_kind.clone(), bound_name, uid))
        };
        Ok((str_at(&sa, "/metadata/uid").to_string(), bound, new_uid(txn.rng())))
    })?;
    let now = jiff::Timestamp::now().as_second();
    let subject = Subject {
        namespace: ns.clone(),
        service_account: name.clone(),
        service_account_uid: sa_uid,
        bound,
    };
    let signed = tokens
        .signer
        .sign(&token::claims(&subject, &audiences, now, expiration, &jti));
    let expires = jiff::Timestamp::from_second(now + expiration)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    body["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    body["spec"]["audiences"] = json!(audiences);
    body["spec"]["expirationSeconds"] = json!(expiration);
    if body["spec"]["boundObjectRef"].is_null() {
        body["spec"]["boundObjectRef"] = Value::Null;
    }
    body["status"] = json!({"token": signed, "expirationTimestamp": expires});
    Ok(created(body))
}
