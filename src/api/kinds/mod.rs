//! The kinds served beyond the original core set, each declared by what it adds to the generic
//! handler: defaults (`SetDefaults_*` and the registry strategies), validation (with
//! kube-apiserver's field paths and messages), and its server-side table (columns and cells of
//! `pkg/printers/internalversion/printers.go`). The kind table in [`super::resources`] points at
//! these [`Hooks`]; one file per API group.

pub mod apps;
pub mod batch;
pub mod config;
pub mod networking;
pub mod policy;
pub mod rbac;
pub mod storage;

use jiff::Timestamp;
use serde_json::Value;

use super::status::FieldError;
use super::table::Col;

/// What a kind adds to the generic handler.
pub struct Hooks {
    /// Defaults, on create and update (after the server has set uid and timestamps).
    pub defaults: fn(&mut Value),
    /// The status a new object starts with (the strategies' `PrepareForCreate`).
    pub initial_status: fn(&mut Value),
    /// Field errors of the object; `old` is the stored object on update.
    pub validate: fn(&Value, Option<&Value>, &mut Vec<FieldError>),
    /// The table's columns and the cells of one object's row.
    pub columns: &'static [Col],
    pub cells: fn(&Value, Timestamp) -> Vec<Value>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks { .. }")
    }
}

/// No defaults, or no initial status.
pub fn nothing(_: &mut Value) {}

/// No validation beyond the generic checks (name, strict fields).
pub fn no_checks(_: &Value, _: Option<&Value>, _: &mut Vec<FieldError>) {}

/// `field is immutable` for a value an update changed (`ValidateImmutableField`).
pub fn immutable(
    field: &str,
    new: Option<&Value>,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    if new != old {
        let shown = new.cloned().unwrap_or(Value::Null);
        errs.push(FieldError::invalid(field, shown, "field is immutable"));
    }
}

/// The string at `key` of a JSON object.
pub fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The array at a JSON pointer (empty when absent).
pub fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Checks of a non-negative integer field.
pub fn non_negative(v: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.pointer(pointer).and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid(
            field,
            n,
            "must be greater than or equal to 0",
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::api::resources::{RESOURCES, id};
    use crate::api::{defaults, table, validation};

    /// One object of every declared kind, as a client would post it.
    fn samples() -> Vec<(usize, Value)> {
        let created = json!("2025-01-10T11:55:00Z");
        let pod_template = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
        let mut job_template = pod_template.clone();
        job_template["spec"]["restartPolicy"] = json!("Never");
        let meta = |name: &str| json!({"name": name, "uid": "00000000-0000-4000-8000-000000000001", "creationTimestamp": created});
        vec![
            (
                id::CONFIG_MAPS,
                json!({"metadata": meta("cfg"), "data": {"a": "1"}, "binaryData": {"b": "AAE="}}),
            ),
            (
                id::SECRETS,
                json!({"metadata": meta("pw"), "stringData": {"password": "hunter2"}}),
            ),
            (
                id::SECRETS,
                json!({"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            ),
            (
                id::SERVICE_ACCOUNTS,
                json!({"metadata": meta("robot"), "secrets": [{"name": "robot-token"}]}),
            ),
            (
                id::PERSISTENT_VOLUMES,
                json!({"metadata": meta("pv1"), "spec": {"capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "hostPath": {"path": "/data"}, "storageClassName": "local",
                "claimRef": {"namespace": "default", "name": "data"}}}),
            ),
            (
                id::PERSISTENT_VOLUMES,
                json!({"metadata": meta("broken"), "spec": {}}),
            ),
            (
                id::PERSISTENT_VOLUME_CLAIMS,
                json!({"metadata": meta("data"), "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
            ),
            (
                id::JOBS,
                json!({"metadata": meta("pi"), "spec": {"template": job_template}}),
            ),
            (
                id::JOBS,
                json!({"metadata": meta("always"), "spec": {"template": pod_template}}),
            ),
            (
                id::CRON_JOBS,
                json!({"metadata": meta("nightly"), "spec": {"schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": job_template}}}}),
            ),
            (
                id::CRON_JOBS,
                json!({"metadata": meta("bad"), "spec": {"schedule": "every day",
                "jobTemplate": {"spec": {"template": job_template}}}}),
            ),
            (
                id::DAEMON_SETS,
                json!({"metadata": meta("agent"), "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": pod_template}}),
            ),
            (
                id::STATEFUL_SETS,
                json!({"metadata": meta("db"), "spec": {"serviceName": "db", "replicas": 3,
                "selector": {"matchLabels": {"app": "other"}}, "template": pod_template}}),
            ),
            (
                id::CONTROLLER_REVISIONS,
                json!({"metadata": {"name": "agent-5d8f6c7b9", "creationTimestamp": created,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                        "uid": "00000000-0000-4000-8000-000000000002", "controller": true}]},
                "data": {"spec": {"template": {"$patch": "replace", "spec": {"containers": []}}}}, "revision": 2}),
            ),
            (
                id::STORAGE_CLASSES,
                json!({"metadata": {"name": "local", "creationTimestamp": created,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "kemu.io/local"}),
            ),
            (
                id::POD_DISRUPTION_BUDGETS,
                json!({"metadata": meta("web"), "spec": {"minAvailable": "50%",
                "selector": {"matchLabels": {"app": "web"}}}}),
            ),
            (
                id::POD_DISRUPTION_BUDGETS,
                json!({"metadata": meta("both"), "spec": {"minAvailable": 1, "maxUnavailable": "120%"}}),
            ),
            (
                id::NETWORK_POLICIES,
                json!({"metadata": meta("deny"), "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"ports": [{"port": 53}], "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}}),
            ),
            (
                id::INGRESSES,
                json!({"metadata": meta("web"), "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example"]}],
                "rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
            ),
            (
                id::INGRESSES,
                json!({"metadata": meta("nopath"), "spec": {"rules": [{"http": {"paths": [{"path": "x",
                "backend": {"service": {"name": "web"}}}]}}]}}),
            ),
            (
                id::INGRESS_CLASSES,
                json!({"metadata": meta("nginx"), "spec": {"controller": "k8s.io/ingress-nginx",
                "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}}),
            ),
            (
                id::ROLES,
                json!({"metadata": meta("reader"), "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
            ),
            (
                id::ROLE_BINDINGS,
                json!({"metadata": meta("read"), "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "robot", "namespace": "default"}]}),
            ),
            (
                id::CLUSTER_ROLES,
                json!({"metadata": meta("view"), "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]}),
            ),
            (
                id::CLUSTER_ROLE_BINDINGS,
                json!({"metadata": meta("view"), "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "view"},
                "subjects": [{"kind": "Group", "name": "devs"}, {"kind": "ServiceAccount", "name": "robot"}]}),
            ),
        ]
    }

    /// Each sample after defaulting, with its validation errors and its table row.
    #[test]
    fn every_declared_kind_defaults_validates_and_prints() {
        let now: jiff::Timestamp = "2025-01-10T12:00:00Z".parse().unwrap();
        let mut out = String::new();
        for (rt, mut obj) in samples() {
            defaults::apply(rt, &mut obj);
            defaults::initial_status(rt, &mut obj);
            let errs: Vec<String> = validation::validate(rt, &obj, None)
                .iter()
                .map(|e| e.to_string())
                .collect();
            let columns: Vec<String> = table::columns(rt)
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect();
            out.push_str(&format!(
                "== {} {}\n{}\nerrors: {errs:#?}\ncolumns: {}\ncells: {}\n\n",
                RESOURCES[rt].kind,
                obj["metadata"]["name"].as_str().unwrap_or_default(),
                pretty(&obj),
                columns.join(" | "),
                serde_json::to_string(&table::cells(rt, &obj, now)).unwrap(),
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    fn pretty(v: &Value) -> String {
        serde_json::to_string_pretty(v).unwrap()
    }

    #[test]
    fn immutable_config_and_secret_data() {
        let old = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "1"}});
        let mut changed = old.clone();
        changed["data"]["a"] = json!("2");
        changed["immutable"] = json!(false);
        let errs: Vec<String> = validation::validate(id::CONFIG_MAPS, &changed, Some(&old))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            [
                "data: Forbidden: field is immutable when `immutable` is set",
                "immutable: Forbidden: field is immutable when `immutable` is set"
            ]
        );
        let secret = json!({"metadata": {"name": "s"}, "type": "Opaque"});
        let mut retyped = secret.clone();
        retyped["type"] = json!("kubernetes.io/tls");
        let errs = validation::validate(id::SECRETS, &retyped, Some(&secret));
        assert!(
            errs.iter().any(|e| e.to_string()
                == "type: Invalid value: \"kubernetes.io/tls\": field is immutable")
        );
    }
}
