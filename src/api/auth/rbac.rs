//! RBAC evaluation, as kube-apiserver's RBAC authorizer does it: a request is allowed when a
//! rule of a role bound to the user (by a ClusterRoleBinding, or a RoleBinding in the request's
//! namespace) covers its verb, API group, resource, subresource and name (or its path, for
//! non-resource requests). Pure: the caller hands over the bindings and a role lookup.

use serde_json::Value;

use super::{Attributes, User};

/// The RBAC objects a decision reads.
pub struct Policy<'a> {
    pub cluster_role_bindings: &'a [Value],
    /// RoleBindings of the request's namespace.
    pub role_bindings: &'a [Value],
    /// A Role (`kind` "Role", in `namespace`) or ClusterRole by name.
    pub role: &'a dyn Fn(&str, &str, &str) -> Option<Value>,
}

/// An allow with kube's reason text, or no decision (denied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    NoOpinion,
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rule` covers the request (`RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(rule, "verbs");
    if !has(&verbs, &a.verb) {
        return false;
    }
    if a.resource.is_empty() {
        // A non-resource request: exact path or a `prefix*` rule.
        return strs(rule, "nonResourceURLs").iter().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    if !has(&strs(rule, "apiGroups"), &a.group) {
        return false;
    }
    let resources = strs(rule, "resources");
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
            || (!a.subresource.is_empty() && *r == format!("{}/*", a.resource))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(rule, "resourceNames");
    names.is_empty() || names.contains(&a.name)
}

/// The subject of `binding` that is `user`, described as kube's reason text does.
fn subject_matches(binding: &Value, user: &User, binding_ns: &str) -> Option<String> {
    for s in binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "User" if name == user.name => return Some(format!("User {name:?}")),
            "Group" if user.groups.iter().any(|g| g == name) => {
                return Some(format!("Group {name:?}"));
            }
            "ServiceAccount" => {
                let ns = s
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                if user.name == format!("system:serviceaccount:{ns}:{name}") {
                    return Some(format!("ServiceAccount \"{name}/{ns}\""));
                }
            }
            _ => {}
        }
    }
    None
}

/// The decision for `user` doing `a` under `policy`.
pub fn authorize(policy: &Policy<'_>, user: &User, a: &Attributes) -> Decision {
    let bindings = policy.cluster_role_bindings.iter().map(|b| (b, "")).chain(
        policy
            .role_bindings
            .iter()
            .map(|b| (b, a.namespace.as_str())),
    );
    for (binding, ns) in bindings {
        let Some(subject) = subject_matches(binding, user, ns) else {
            continue;
        };
        let role_kind = binding
            .pointer("/roleRef/kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let role_name = binding
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(role) = (policy.role)(role_kind, ns, role_name) else {
            continue;
        };
        let rules = role
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if rules.iter().any(|r| rule_allows(r, a)) {
            let binding_name = binding
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (binding_kind, shown) = if ns.is_empty() {
                ("ClusterRoleBinding", binding_name.to_string())
            } else {
                ("RoleBinding", format!("{binding_name}/{ns}"))
            };
            return Decision::Allow(format!(
                "RBAC: allowed by {binding_kind} {shown:?} of {role_kind} {role_name:?} to {subject}"
            ));
        }
    }
    Decision::NoOpinion
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            namespace: "default".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    #[test]
    fn rules_and_bindings() {
        let robot = User::service_account("default", "robot", "u1");
        let role = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["*"]}]});
        let binding = json!({"metadata": {"name": "read"}, "roleRef": {"kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot"}]});
        let lookup = move |kind: &str, ns: &str, name: &str| {
            (kind == "Role" && ns == "default" && name == "reader").then(|| role.clone())
        };
        let policy = Policy {
            cluster_role_bindings: &[],
            role_bindings: &[binding],
            role: &lookup,
        };
        let decide = |a: Attributes| authorize(&policy, &robot, &a);
        assert_eq!(
            decide(attrs("list", "", "pods", "", "")),
            Decision::Allow(
                "RBAC: allowed by RoleBinding \"read/default\" of Role \"reader\" to ServiceAccount \"robot/default\"".into()
            )
        );
        assert!(matches!(
            decide(attrs("get", "", "pods", "log", "p")),
            Decision::Allow(_)
        ));
        assert_eq!(
            decide(attrs("get", "", "pods", "exec", "p")),
            Decision::NoOpinion
        );
        assert_eq!(
            decide(attrs("delete", "", "pods", "", "p")),
            Decision::NoOpinion
        );
        assert!(matches!(
            decide(attrs("delete", "apps", "deployments", "", "web")),
            Decision::Allow(_)
        ));
        assert_eq!(
            decide(attrs("delete", "apps", "deployments", "", "db")),
            Decision::NoOpinion
        );
        let other = User::service_account("default", "other", "u2");
        assert_eq!(
            authorize(&policy, &other, &attrs("list", "", "pods", "", "")),
            Decision::NoOpinion
        );
    }

    #[test]
    fn non_resource_urls() {
        let rule = json!({"nonResourceURLs": ["/healthz", "/api/*"], "verbs": ["get"]});
        let mut a = attrs("get", "", "", "", "");
        for (path, ok) in [("/healthz", true), ("/api/v1", true), ("/apis", false)] {
            a.path = path.into();
            assert_eq!(rule_allows(&rule, &a), ok, "{path}");
        }
    }
}
