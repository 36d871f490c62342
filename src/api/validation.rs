//! Validation with the real API server's field paths and messages (`k8s.io/kubernetes/pkg/apis/
//! core/validation`), answered as 422 `Invalid` with `details.causes`.
//! Allocation errors (ClusterIP, NodePort) come from `service::allocate`, which knows the ranges.

use serde_json::{Map, Value};

use super::resources::{RESOURCES, id};
use super::status::FieldError;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1035(s: &str) -> bool {
    is_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_label)
}

/// Errors for a DNS-1123 subdomain value.
pub fn check_subdomain(field: &str, value: &str, out: &mut Vec<FieldError>) {
    if value.len() > 253 {
        out.push(FieldError::invalid(
            field,
            value,
            "must be no more than 253 characters",
        ));
    }
    if !is_subdomain(value) {
        out.push(FieldError::invalid(field, value, SUBDOMAIN_MSG));
    }
}

/// Errors for a DNS-1123 label value.
pub fn check_label(field: &str, value: &str, out: &mut Vec<FieldError>) {
    if value.len() > 63 {
        out.push(FieldError::invalid(
            field,
            value,
            "must be no more than 63 characters",
        ));
    }
    if !is_label(value) {
        out.push(FieldError::invalid(field, value, LABEL_MSG));
    }
}

fn check_dns1035(field: &str, value: &str, out: &mut Vec<FieldError>) {
    if value.len() > 63 {
        out.push(FieldError::invalid(
            field,
            value,
            "must be no more than 63 characters",
        ));
    }
    if !is_dns1035(value) {
        out.push(FieldError::invalid(field, value, DNS1035_MSG));
    }
}

/// `map[string]string{"a":"1", "b":"2"}` (Go's `%#v`, keys sorted).
pub fn go_map(map: Option<&Map<String, Value>>) -> String {
    let Some(map) = map else {
        return "map[string]string(nil)".into();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{:?}:{:?}", k, v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

/// `v1.LabelSelector{MatchLabels:..., MatchExpressions:...}` as Go prints it.
fn go_label_selector(sel: &Value) -> String {
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let items: Vec<String> = list
                .iter()
                .map(|e| {
                    let values: Vec<String> = e
                        .get("values")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                        .collect();
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:[]string{{{}}}}}",
                        e.get("key").and_then(Value::as_str).unwrap_or_default(),
                        e.get("operator").and_then(Value::as_str).unwrap_or_default(),
                        values.join(", ")
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
        _ => "[]v1.LabelSelectorRequirement(nil)".into(),
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{}}}",
        go_map(sel.get("matchLabels").and_then(Value::as_object)),
        exprs
    )
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Validate an object of resource `rt`; `old` is the stored object on update.
pub fn validate(rt: usize, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        match rt {
            id::NAMESPACES => check_label("metadata.name", name, &mut errs),
            id::SERVICES => check_dns1035("metadata.name", name, &mut errs),
            _ => check_subdomain("metadata.name", name, &mut errs),
        }
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match rt {
        id::PODS => {
            pod_spec("spec", &spec, false, &mut errs);
            if let Some(old) = old {
                pod_update(old, obj, &mut errs);
            }
        }
        id::REPLICATION_CONTROLLERS => {
            replicas(&spec, &mut errs);
            let selector = spec.get("selector").and_then(Value::as_object);
            match selector {
                None => errs.push(FieldError::required("spec.selector", "")),
                Some(sel) if sel.is_empty() => errs.push(FieldError::required("spec.selector", "")),
                Some(sel) => {
                    let labels = spec
                        .pointer("/template/metadata/labels")
                        .and_then(Value::as_object);
                    let ok = sel
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
                    if !ok {
                        errs.push(FieldError::invalid_go(
                            "spec.template.metadata.labels",
                            go_map(labels),
                            "`selector` does not match template `labels`",
                        ));
                    }
                }
            }
            template(&spec, &mut errs);
        }
        id::REPLICA_SETS | id::DEPLOYMENTS => {
            replicas(&spec, &mut errs);
            let what = if rt == id::DEPLOYMENTS {
                "deployment"
            } else {
                "replicaset"
            };
            match spec.get("selector").filter(|s| s.is_object()) {
                None => {
                    // A nil selector selects nothing, so the template cannot match it either.
                    errs.push(FieldError::required("spec.selector", ""));
                    let labels = spec
                        .pointer("/template/metadata/labels")
                        .and_then(Value::as_object);
                    errs.push(FieldError::invalid_go(
                        "spec.template.metadata.labels",
                        go_map(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
                Some(sel) => {
                    let selector = super::selectors::from_label_selector(sel);
                    if selector.is_empty() {
                        errs.push(FieldError::invalid_go(
                            "spec.selector",
                            go_label_selector(sel),
                            format!("empty selector is invalid for {what}"),
                        ));
                    }
                    let labels = spec
                        .pointer("/template/metadata/labels")
                        .and_then(Value::as_object);
                    if !selector.is_empty()
                        && !selector
                            .matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
                    {
                        errs.push(FieldError::invalid_go(
                            "spec.template.metadata.labels",
                            go_map(labels),
                            "`selector` does not match template `labels`",
                        ));
                    }
                    if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector"))
                        && old_sel != sel
                    {
                        errs.push(FieldError::invalid_go(
                            "spec.selector",
                            go_label_selector(sel),
                            "field is immutable",
                        ));
                    }
                }
            }
            template(&spec, &mut errs);
            if rt == id::DEPLOYMENTS {
                let ty = spec
                    .pointer("/strategy/type")
                    .and_then(Value::as_str)
                    .unwrap_or("RollingUpdate");
                if ty != "RollingUpdate" && ty != "Recreate" {
                    errs.push(FieldError::not_supported(
                        "spec.strategy.type",
                        ty,
                        &["Recreate", "RollingUpdate"],
                    ));
                }
            }
        }
        id::SERVICES => service(&spec, old, &mut errs),
        _ => {
            if let Some(hooks) = RESOURCES[rt].hooks {
                (hooks.validate)(obj, old, &mut errs);
            }
        }
    }
    errs
}

fn replicas(spec: &Value, errs: &mut Vec<FieldError>) {
    if let Some(n) = spec.get("replicas").and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            n,
            "must be greater than or equal to 0",
        ));
    }
}

fn template(spec: &Value, errs: &mut Vec<FieldError>) {
    match spec.get("template").filter(|t| t.is_object()) {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            let pod = t.get("spec").cloned().unwrap_or(Value::Null);
            pod_spec("spec.template.spec", &pod, true, errs);
        }
    }
}

/// PodSpec checks (containers, images, ports, policies).
pub fn pod_spec(path: &str, spec: &Value, in_template: bool, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names: Vec<&str> = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cpath = format!("{path}.{list}[{i}]");
            match str_of(c, "name") {
                None | Some("") => errs.push(FieldError::required(format!("{cpath}.name"), "")),
                Some(n) => {
                    check_label(&format!("{cpath}.name"), n, errs);
                    if names.contains(&n) {
                        errs.push(FieldError::duplicate(format!("{cpath}.name"), n));
                    }
                    names.push(n);
                }
            }
            if str_of(c, "image").is_none_or(|s| s.trim().is_empty()) {
                errs.push(FieldError::required(format!("{cpath}.image"), ""));
            }
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ppath = format!("{cpath}.ports[{j}]");
                match p.get("containerPort").and_then(Value::as_i64) {
                    None => errs.push(FieldError::required(format!("{ppath}.containerPort"), "")),
                    Some(n) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                        format!("{ppath}.containerPort"),
                        n,
                        PORT_RANGE_MSG,
                    )),
                    _ => {}
                }
                protocol(&format!("{ppath}.protocol"), p, errs);
            }
            if let Some(policy) = str_of(c, "imagePullPolicy")
                && !["Always", "IfNotPresent", "Never"].contains(&policy)
            {
                errs.push(FieldError::not_supported(
                    format!("{cpath}.imagePullPolicy"),
                    policy,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
    }
    if let Some(policy) = str_of(spec, "restartPolicy") {
        if in_template && policy != "Always" {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &["Always"],
            ));
        } else if !["Always", "OnFailure", "Never"].contains(&policy) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(policy) = str_of(spec, "dnsPolicy") {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&policy) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                policy,
                &ok,
            ));
        }
    }
}

fn protocol(field: &str, port: &Value, errs: &mut Vec<FieldError>) {
    if let Some(p) = str_of(port, "protocol")
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        errs.push(FieldError::not_supported(field, p, &["SCTP", "TCP", "UDP"]));
    }
}

/// The fields of a pod spec an update may change are images, activeDeadlineSeconds,
/// terminationGracePeriodSeconds and added tolerations; everything else is forbidden.
fn pod_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let normalise = |spec: Option<&Value>| -> Value {
        let mut s = spec.cloned().unwrap_or(Value::Null);
        if let Some(m) = s.as_object_mut() {
            for list in ["containers", "initContainers"] {
                for c in m
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
            m.remove("activeDeadlineSeconds");
            m.remove("terminationGracePeriodSeconds");
            m.remove("tolerations");
        }
        s
    };
    if normalise(old.get("spec")) != normalise(new.get("spec")) {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn service(spec: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let ty = str_of(spec, "type").unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, SERVICE_TYPES));
    }
    let headless = str_of(spec, "clusterIP") == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && str_of(spec, "externalName").is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match str_of(p, "name") {
            None | Some("") if ports.len() > 1 => {
                errs.push(FieldError::required(format!("{path}.name"), ""))
            }
            None | Some("") => {}
            Some(n) => {
                check_label(&format!("{path}.name"), n, errs);
                if names.contains(&n) {
                    errs.push(FieldError::duplicate(format!("{path}.name"), n));
                }
                names.push(n);
            }
        }
        match p.get("port").and_then(Value::as_i64) {
            None => errs.push(FieldError::required(format!("{path}.port"), "")),
            Some(n) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                format!("{path}.port"),
                n,
                PORT_RANGE_MSG,
            )),
            _ => {}
        }
        protocol(&format!("{path}.protocol"), p, errs);
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errs.push(FieldError::invalid(
                        format!("{path}.targetPort"),
                        n,
                        PORT_RANGE_MSG,
                    ));
                }
            }
            Some(Value::String(s)) if s.is_empty() || s.len() > 15 || !is_label(s) => {
                errs.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    s.as_str(),
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                ));
            }
            _ => {}
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && ty != "NodePort"
            && ty != "LoadBalancer"
        {
            errs.push(FieldError::forbidden(
                format!("{path}.nodePort"),
                format!("may not be used when `type` is '{ty}'"),
            ));
        }
    }
    if let Some(affinity) = str_of(spec, "sessionAffinity")
        && !["ClientIP", "None"].contains(&affinity)
    {
        errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            affinity,
            &["ClientIP", "None"],
        ));
    }
    if let Some(old) = old {
        let old_ip = old
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let new_ip = str_of(spec, "clusterIP").unwrap_or_default();
        let from_or_to_external = ty == "ExternalName"
            || old.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
        if !old_ip.is_empty() && old_ip != new_ip && !from_or_to_external {
            let ips: Vec<String> = spec
                .get("clusterIPs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| format!("{:?}", v.as_str().unwrap_or_default()))
                .collect();
            errs.push(FieldError::invalid_go(
                "spec.clusterIPs[0]",
                format!("[]string{{{}}}", ips.join(", ")),
                "may not change once set",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::ApiError;
    use serde_json::json;

    fn messages(rt: usize, kind: &str, obj: Value, old: Option<Value>) -> String {
        let errs = validate(rt, &obj, old.as_ref());
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if errs.is_empty() {
            "ok".into()
        } else {
            ApiError::invalid(kind, "", name, &errs).message
        }
    }

    #[test]
    fn messages_like_the_real_server() {
        let svc = |spec: Value| json!({"metadata": {"name": "x"}, "spec": spec});
        let out = [
            messages(id::SERVICES, "Service", svc(json!({"ports": [{"port": 70000}]})), None),
            messages(
                id::SERVICES,
                "Service",
                svc(json!({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}, {"port": 82}]})),
                None,
            ),
            messages(id::SERVICES, "Service", svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}]})), None),
            messages(id::SERVICES, "Service", svc(json!({"type": "Magic", "ports": []})), None),
            messages(
                id::SERVICES,
                "Service",
                svc(json!({"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "ports": [{"port": 80}]})),
                Some(svc(json!({"clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"]}))),
            ),
            messages(id::SERVICES, "Service", json!({"metadata": {"name": "9lives"}, "spec": {"ports": [{"port": 1}]}}), None),
            messages(id::PODS, "Pod", json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}), None),
            messages(id::PODS, "Pod", json!({"metadata": {"name": "p"}, "spec": {"containers": []}}), None),
            messages(
                id::PODS,
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [
                    {"name": "A", "image": ""}, {"name": "b", "image": "x", "ports": [{"containerPort": 0}]}, {"name": "b", "image": "y"}]}}),
                None,
            ),
            messages(
                id::PODS,
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x", "command": ["sh"]}]}}),
                Some(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "y"}]}})),
            ),
            messages(
                id::REPLICATION_CONTROLLERS,
                "ReplicationController",
                json!({"metadata": {"name": "rc"}, "spec": {"replicas": -1, "selector": {"app": "a"}, "template": {
                    "metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
                None,
            ),
            messages(
                id::DEPLOYMENTS,
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {"template": {
                    "metadata": {"labels": {"app": "b"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
                None,
            ),
            messages(
                id::DEPLOYMENTS,
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "c"}}, "template": {
                    "metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
                Some(json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}})),
            ),
            messages(id::NAMESPACES, "Namespace", json!({"metadata": {"name": "a.b"}}), None),
        ]
        .join("\n");
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }
}
