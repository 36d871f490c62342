//! rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding and ClusterRoleBinding: stored and
//! validated here; evaluated by [`crate::api::auth`] for access reviews.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Hooks, arr, nothing, str_of};
use crate::api::object::str_at;
use crate::api::status::FieldError;
use crate::api::table::{AGE, Col, NAME, age, name};

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Roles have no printer in kube-apiserver: its default table (`Name`, `Created At`).
const DEFAULT_COLUMNS: &[Col] = &[
    NAME,
    (
        "Created At",
        "date",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
];

fn created_at_cells(obj: &Value, _now: Timestamp) -> Vec<Value> {
    vec![name(obj), json!(str_at(obj, "/metadata/creationTimestamp"))]
}

fn rules(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    for (i, rule) in arr(obj, "/rules").iter().enumerate() {
        let path = format!("rules[{i}]");
        if arr(rule, "/verbs").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = arr(rule, "/nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid_go(
                    format!("{path}.nonResourceURLs"),
                    format!(
                        "{:?}",
                        urls.iter()
                            .map(|u| u.as_str().unwrap_or_default())
                            .collect::<Vec<_>>()
                    ),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !arr(rule, "/apiGroups").is_empty() || !arr(rule, "/resources").is_empty() {
                errs.push(FieldError::invalid_go(
                    format!("{path}.nonResourceURLs"),
                    "[...]",
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if arr(rule, "/apiGroups").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if arr(rule, "/resources").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn validate_role(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    rules(obj, true, errs);
}

fn validate_cluster_role(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    rules(obj, false, errs);
}

pub static ROLE: Hooks = Hooks {
    defaults: nothing,
    initial_status: nothing,
    validate: validate_role,
    columns: DEFAULT_COLUMNS,
    cells: created_at_cells,
};

pub static CLUSTER_ROLE: Hooks = Hooks {
    defaults: nothing,
    initial_status: nothing,
    validate: validate_cluster_role,
    columns: DEFAULT_COLUMNS,
    cells: created_at_cells,
};

/// `apiGroup` of subjects, as `SetDefaults_Subject` fills it.
fn binding_defaults(obj: &mut Value) {
    for s in obj
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(m) = s.as_object_mut() else { continue };
        if m.get("apiGroup")
            .is_some_and(|g| g.as_str().is_some_and(|g| !g.is_empty()))
        {
            continue;
        }
        match m.get("kind").and_then(Value::as_str) {
            Some("User") | Some("Group") => {
                m.insert("apiGroup".into(), json!(GROUP));
            }
            Some("ServiceAccount") => {
                m.insert("apiGroup".into(), json!(""));
            }
            _ => {}
        }
    }
}

fn binding(obj: &Value, old: Option<&Value>, namespaced: bool, errs: &mut Vec<FieldError>) {
    let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
    if str_of(&role_ref, "apiGroup") != Some(GROUP) {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            str_of(&role_ref, "apiGroup").unwrap_or_default(),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = str_of(&role_ref, "kind").unwrap_or_default();
    if !kinds.contains(&kind) {
        errs.push(FieldError::not_supported("roleRef.kind", kind, kinds));
    }
    if str_of(&role_ref, "name").is_none_or(str::is_empty) {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for (i, s) in arr(obj, "/subjects").iter().enumerate() {
        let path = format!("subjects[{i}]");
        if str_of(s, "name").is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{path}.name"), ""));
        }
        match str_of(s, "kind").unwrap_or_default() {
            "ServiceAccount" => {
                if !namespaced && str_of(s, "namespace").is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{path}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if str_of(s, "apiGroup") != Some(GROUP) {
                    errs.push(FieldError::not_supported(
                        format!("{path}.apiGroup"),
                        str_of(s, "apiGroup").unwrap_or_default(),
                        &[GROUP],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{path}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old
        && old.get("roleRef") != obj.get("roleRef")
    {
        errs.push(FieldError::invalid_go(
            "roleRef",
            format!(
                "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
                str_of(&role_ref, "apiGroup").unwrap_or_default(),
                kind,
                str_of(&role_ref, "name").unwrap_or_default()
            ),
            "cannot change roleRef",
        ));
    }
}

fn validate_role_binding(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    binding(obj, old, true, errs);
}

fn validate_cluster_role_binding(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    binding(obj, old, false, errs);
}

/// Users, groups and `namespace/name` service accounts of a binding (`SubjectsStrings`).
fn subjects(obj: &Value) -> [String; 3] {
    let mut out: [Vec<String>; 3] = Default::default();
    for s in arr(obj, "/subjects") {
        let name = str_at(s, "/name").to_string();
        match str_of(s, "kind") {
            Some("User") => out[0].push(name),
            Some("Group") => out[1].push(name),
            Some("ServiceAccount") => out[2].push(format!("{}/{name}", str_at(s, "/namespace"))),
            _ => {}
        }
    }
    out.map(|v| v.join(", "))
}

fn binding_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let [users, groups, sas] = subjects(obj);
    vec![
        name(obj),
        json!(format!(
            "{}/{}",
            str_at(obj, "/roleRef/kind"),
            str_at(obj, "/roleRef/name")
        )),
        age(obj, now),
        json!(users),
        json!(groups),
        json!(sas),
    ]
}

const BINDING_COLUMNS: &[Col] = &[
    NAME,
    (
        "Role",
        "string",
        "",
        0,
        "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
    ),
    AGE,
    ("Users", "string", "", 1, "Users in the roleBinding"),
    ("Groups", "string", "", 1, "Groups in the roleBinding"),
    (
        "ServiceAccounts",
        "string",
        "",
        1,
        "ServiceAccounts in the roleBinding",
    ),
];

pub static ROLE_BINDING: Hooks = Hooks {
    defaults: binding_defaults,
    initial_status: nothing,
    validate: validate_role_binding,
    columns: BINDING_COLUMNS,
    cells: binding_cells,
};

pub static CLUSTER_ROLE_BINDING: Hooks = Hooks {
    defaults: binding_defaults,
    initial_status: nothing,
    validate: validate_cluster_role_binding,
    columns: BINDING_COLUMNS,
    cells: binding_cells,
};
