//! Who a request comes from, and what it may do.
//!
//! The API server listens on plain HTTP behind the lead's TLS front, which admits only the
//! lab's admin certificate (CN=kubernetes-admin, O=system:masters): a request without a bearer
//! token is that admin. A bearer token is a service-account token ([`token`]) and makes the
//! request its service account's; a bad one is 401. The admin may impersonate
//! (`Impersonate-User`, `Impersonate-Group`: `kubectl --as`). Everyone but `system:masters` is
//! held to RBAC ([`rbac`]). [`reviews`] answers the access and token reviews and issues tokens.

pub mod rbac;
pub mod reviews;
pub mod token;

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::object::{new_uid, now_rfc3339};
use super::registry::{Registry, Txn};
use super::resources::id;
use super::status::{ApiError, ApiResult};
use token::Signer;

/// The keys service-account tokens are signed and checked with, and the audiences this server
/// accepts.
#[derive(Debug)]
pub struct Tokens {
    /// Signs service-account tokens.
    pub signer: Signer,
    /// Keys besides the signer's whose tokens are accepted.
    pub verification_keys: Vec<Signer>,
    /// The audiences a token must name to authenticate here (`--api-audiences`: the issuer).
    pub audiences: Vec<String>,
}

impl Tokens {
    /// Every key a token may be signed with.
    pub fn verifiers(&self) -> impl Iterator<Item = &Signer> {
        std::iter::once(&self.signer).chain(self.verification_keys.iter())
    }
}

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated user (`user.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The lab's admin, as its client certificate names it.
    pub fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
            extra: BTreeMap::new(),
        }
    }

    /// A request without credentials on the secure port.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    pub fn service_account(namespace: &str, name: &str, uid: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// Members of `system:masters` pass every check (kube's privileged-group authorizer).
    pub fn is_privileged(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }

    /// `UserInfo` as reviews answer it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// What a request does, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The path of a non-resource request (`resource` empty).
    pub path: String,
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized()
}

/// The user a request comes from. `peer` is what the secure port's TLS layer knows (`None`: the
/// plain port, where a request without credentials is the admin's, as behind the lab's front).
/// As kube-apiserver's union of authenticators: a client certificate first, then a bearer
/// token (a bad one is 401), else anonymous.
pub fn identify(
    registry: &Registry,
    tokens: &Tokens,
    headers: &HeaderMap,
    peer: Option<&super::secure::Peer>,
) -> ApiResult<User> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The scheme is case-insensitive, as kube-apiserver reads it: the Python client sends
    // `bearer <token>`.
    let token = auth
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    let user = match (peer.and_then(|p| p.certificate_user.clone()), token) {
        (Some(user), _) => user,
        (None, Some(token)) => registry
            .txn(|txn| Ok(authenticate_token(tokens, txn, token, &tokens.audiences)))?
            .map_err(|_| unauthorized())?,
        (None, None) if peer.is_some() => User::anonymous(),
        (None, None) => User::admin(),
    };
    impersonate(user, headers)
}

/// `kubectl --as` and `--as-group`: only the admin may.
fn impersonate(user: User, headers: &HeaderMap) -> ApiResult<User> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    };
    let Some(as_user) = values("impersonate-user").into_iter().next() else {
        return Ok(user);
    };
    if !user.is_privileged() {
        return Err(ApiError::forbidden_plain(format!(
            "users {as_user:?} is forbidden: User {:?} cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
            user.name
        )));
    }
    let mut groups = values("impersonate-group");
    let mut uid = values("impersonate-uid")
        .into_iter()
        .next()
        .unwrap_or_default();
    if let Some(rest) = as_user.strip_prefix("system:serviceaccount:")
        && let Some((ns, _)) = rest.split_once(':')
    {
        groups.extend([
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ]);
    }
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    uid = uid.trim().to_string();
    Ok(User {
        name: as_user,
        uid,
        groups,
        extra: BTreeMap::new(),
    })
}

/// The service account a token stands for, if the token is valid and its account (and bound
/// object) still exist (kube's service-account token authenticator).
pub fn authenticate_token(
    tokens: &Tokens,
    txn: &mut Txn<'_>,
    token: &str,
    audiences: &[String],
) -> Result<User, String> {
    let now = jiff::Timestamp::now().as_second();
    let claims = tokens
        .verifiers()
        .find_map(|v| v.verify(token, audiences, now).ok())
        .ok_or_else(|| "invalid bearer token".to_string())?;
    let private = &claims["kubernetes.io"];
    let ns = private["namespace"].as_str().unwrap_or_default();
    let sa = private["serviceaccount"]["name"]
        .as_str()
        .unwrap_or_default();
    let sa_uid = private["serviceaccount"]["uid"]
        .as_str()
        .unwrap_or_default();
    let current = txn
        .get(id::SERVICE_ACCOUNTS, ns, sa)
        .ok_or_else(|| format!("service account {ns}/{sa} has been deleted"))?;
    if current
        .value()
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        != Some(sa_uid)
    {
        return Err(format!("service account UID ({sa_uid}) does not match"));
    }
    let mut user = User::service_account(ns, sa, sa_uid);
    for (kind, rt) in [("pod", id::PODS), ("secret", id::SECRETS)] {
        let Some(bound) = private.get(kind).filter(|b| b.is_object()) else {
            continue;
        };
        let name = bound["name"].as_str().unwrap_or_default();
        let uid = bound["uid"].as_str().unwrap_or_default();
        let live = txn.get(rt, ns, name).map(|o| o.value());
        if live
            .as_ref()
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            != Some(uid)
        {
            return Err(format!("{kind} {ns}/{name} bound to the token is gone"));
        }
        user.extra.insert(
            format!("authentication.kubernetes.io/{kind}-name"),
            vec![name.into()],
        );
        user.extra.insert(
            format!("authentication.kubernetes.io/{kind}-uid"),
            vec![uid.into()],
        );
    }
    if let Some(jti) = claims["jti"].as_str() {
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Ok(user)
}

/// The decision for `user` doing `a`: allowed (with RBAC's reason) or not.
pub fn decide(txn: &Txn<'_>, user: &User, a: &Attributes) -> rbac::Decision {
    if user.is_privileged() {
        return rbac::Decision::Allow(String::new());
    }
    let cluster_role_bindings: Vec<Value> = txn
        .list(id::CLUSTER_ROLE_BINDINGS, None)
        .iter()
        .map(|o| o.value())
        .collect();
    let role_bindings: Vec<Value> = if a.namespace.is_empty() {
        Vec::new()
    } else {
        txn.list(id::ROLE_BINDINGS, Some(&a.namespace))
            .iter()
            .map(|o| o.value())
            .collect()
    };
    let role = |kind: &str, ns: &str, name: &str| match kind {
        "ClusterRole" => txn.get(id::CLUSTER_ROLES, "", name).map(|o| o.value()),
        "Role" => txn.get(id::ROLES, ns, name).map(|o| o.value()),
        _ => None,
    };
    rbac::authorize(
        &rbac::Policy {
            cluster_role_bindings: &cluster_role_bindings,
            role_bindings: &role_bindings,
            role: &role,
        },
        user,
        a,
    )
}

/// 403 for a request RBAC does not allow, worded as kube-apiserver words it.
pub fn check(registry: &Registry, user: &User, a: &Attributes) -> ApiResult<()> {
    if user.is_privileged() {
        return Ok(());
    }
    let decision = registry.txn(|txn| Ok(decide(txn, user, a)))?;
    if matches!(decision, rbac::Decision::Allow(_)) {
        return Ok(());
    }
    if a.resource.is_empty() {
        return Err(ApiError::forbidden_plain(format!(
            "forbidden: User {:?} cannot {} path {:?}",
            user.name, a.verb, a.path
        )));
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let head = if a.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} {:?} is forbidden", a.name)
    };
    Err(ApiError::forbidden_plain(format!(
        "{head}: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.group
    ))
    .with_resource_details(&a.name, &a.resource, &a.group))
}

/// The cluster roles and bindings every cluster starts with (a subset of kube's bootstrap
/// policy): `cluster-admin` for `system:masters`; discovery, public info and self reviews for
/// every authenticated user; `admin`, `edit` and `view` to bind.
pub fn bootstrap_policy(txn: &mut Txn<'_>) -> ApiResult<()> {
    let read = json!(["get", "list", "watch"]);
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let workloads = json!([
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "endpoints",
        "configmaps",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "serviceaccounts",
        "events",
        "deployments",
        "deployments/scale",
        "replicasets",
        "replicasets/scale",
        "statefulsets",
        "statefulsets/scale",
        "daemonsets",
        "jobs",
        "cronjobs",
        "poddisruptionbudgets",
        "ingresses",
        "networkpolicies",
        "endpointslices",
        "leases"
    ]);
    let groups = json!([
        "",
        "apps",
        "batch",
        "policy",
        "networking.k8s.io",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io"
    ]);
    let roles = [
        (
            "cluster-admin",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ),
        (
            "view",
            json!([{"apiGroups": groups, "resources": workloads, "verbs": read},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": read}]),
        ),
        (
            "edit",
            json!([{"apiGroups": groups, "resources": workloads, "verbs": read},
            {"apiGroups": groups, "resources": workloads, "verbs": write},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/eviction", "serviceaccounts/token"], "verbs": ["create", "get"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": read}]),
        ),
        (
            "admin",
            json!([{"apiGroups": groups, "resources": workloads, "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["secrets", "pods/exec", "pods/eviction", "serviceaccounts/token"], "verbs": ["*"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["*"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": read}]),
        ),
        (
            "system:basic-user",
            json!([
            {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]),
        ),
        (
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
            "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        (
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
    ];
    let meta = |name: &str, uid: String| {
        json!({"name": name, "uid": uid, "creationTimestamp": now_rfc3339(),
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
    };
    for (name, rules) in roles {
        if txn.get(id::CLUSTER_ROLES, "", name).is_none() {
            let uid = new_uid(txn.rng());
            txn.put(
                id::CLUSTER_ROLES,
                json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": meta(name, uid), "rules": rules}),
            )?;
        }
    }
    let group =
        |g: &str| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g});
    let bindings = [
        ("cluster-admin", vec![group(MASTERS)]),
        ("system:basic-user", vec![group(AUTHENTICATED)]),
        ("system:discovery", vec![group(AUTHENTICATED)]),
        (
            "system:public-info-viewer",
            vec![group(AUTHENTICATED), group("system:unauthenticated")],
        ),
    ];
    for (name, subjects) in bindings {
        if txn.get(id::CLUSTER_ROLE_BINDINGS, "", name).is_none() {
            let uid = new_uid(txn.rng());
            txn.put(id::CLUSTER_ROLE_BINDINGS, json!({"kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": meta(name, uid), "subjects": subjects,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}}))?;
        }
    }
    Ok(())
}
