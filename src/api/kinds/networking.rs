//! networking.k8s.io/v1 NetworkPolicy, Ingress and IngressClass: stored, defaulted and
//! validated; enforcing them is the add-ons' work.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Hooks, arr, nothing, str_of};
use crate::api::object::{ensure_map, set_default, str_at};
use crate::api::selectors::format_label_selector;
use crate::api::status::FieldError;
use crate::api::table::{AGE, NAME, age, name};

// ----- NetworkPolicy -----

fn network_policy_defaults(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    set_default(spec, "podSelector", json!({}));
    for dir in ["ingress", "egress"] {
        for rule in spec
            .get_mut(dir)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for port in rule
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = port.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
    let has_types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if !has_types {
        let egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

fn valid_cidr(s: &str) -> bool {
    s.parse::<ipnet::IpNet>().is_ok()
}

fn validate_network_policy(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    for (i, t) in arr(&spec, "/policyTypes").iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if t != "Ingress" && t != "Egress" {
            errs.push(FieldError::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in arr(&spec, &format!("/{dir}")).iter().enumerate() {
            for (j, port) in arr(rule, "/ports").iter().enumerate() {
                let path = format!("spec.{dir}[{i}].ports[{j}]");
                if let Some(p) = str_of(port, "protocol")
                    && !["TCP", "UDP", "SCTP"].contains(&p)
                {
                    errs.push(FieldError::not_supported(
                        format!("{path}.protocol"),
                        p,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
                if let Some(n) = port.get("port").and_then(Value::as_i64)
                    && !(1..=65535).contains(&n)
                {
                    errs.push(FieldError::invalid(
                        format!("{path}.port"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let (Some(start), Some(end)) = (
                    port.get("port").and_then(Value::as_i64),
                    port.get("endPort").and_then(Value::as_i64),
                ) && end < start
                {
                    errs.push(FieldError::invalid(
                        format!("{path}.endPort"),
                        end,
                        "must be greater than or equal to `port`",
                    ));
                }
            }
            for (j, peer) in arr(rule, &format!("/{peers}")).iter().enumerate() {
                let path = format!("spec.{dir}[{i}].{peers}[{j}]");
                let set = ["podSelector", "namespaceSelector", "ipBlock"]
                    .iter()
                    .filter(|k| peer.get(**k).is_some_and(|v| !v.is_null()))
                    .count();
                if set == 0 {
                    errs.push(FieldError::required(path.clone(), "must specify a peer"));
                }
                if let Some(block) = peer.get("ipBlock").filter(|b| b.is_object()) {
                    if set > 1 {
                        errs.push(FieldError::forbidden(
                            path.clone(),
                            "may not specify both ipBlock and another peer",
                        ));
                    }
                    let cidr = str_at(block, "/cidr");
                    if !valid_cidr(cidr) {
                        errs.push(FieldError::invalid(
                            format!("{path}.ipBlock.cidr"),
                            cidr,
                            "must be a valid CIDR",
                        ));
                    }
                    for (k, except) in arr(block, "/except").iter().enumerate() {
                        let e = except.as_str().unwrap_or_default();
                        if !valid_cidr(e) {
                            errs.push(FieldError::invalid(
                                format!("{path}.ipBlock.except[{k}]"),
                                e,
                                "must be a valid CIDR",
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn network_policy_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(obj),
        json!(format_label_selector(obj.pointer("/spec/podSelector"))),
        age(obj, now),
    ]
}

pub static NETWORK_POLICY: Hooks = Hooks {
    defaults: network_policy_defaults,
    initial_status: nothing,
    validate: validate_network_policy,
    columns: &[
        NAME,
        (
            "Pod-Selector",
            "string",
            "",
            0,
            "podSelector selects the pods to which this NetworkPolicy object applies.",
        ),
        AGE,
    ],
    cells: network_policy_cells,
};

// ----- Ingress -----

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];

fn backend(path: &str, b: &Value, errs: &mut Vec<FieldError>) {
    let service = b.get("service").filter(|s| s.is_object());
    let resource = b.get("resource").filter(|s| s.is_object());
    match (service, resource) {
        (None, None) => errs.push(FieldError::invalid_go(
            path,
            "networking.IngressBackend{...}",
            "resource or service backend is required",
        )),
        (Some(_), Some(_)) => errs.push(FieldError::invalid_go(
            path,
            "networking.IngressBackend{...}",
            "cannot set both resource and service backends",
        )),
        (Some(s), None) => {
            if str_at(s, "/name").is_empty() {
                errs.push(FieldError::required(format!("{path}.service.name"), ""));
            }
            let number = s.pointer("/port/number").and_then(Value::as_i64);
            let named = s
                .pointer("/port/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (number, named) {
                (None, None) => errs.push(FieldError::required(
                    format!("{path}.service.port"),
                    "port name or number is required",
                )),
                (Some(_), Some(_)) => errs.push(FieldError::invalid_go(
                    format!("{path}.service.port"),
                    "networking.ServiceBackendPort{...}",
                    "cannot set both port name & port number",
                )),
                (Some(n), None) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                    format!("{path}.service.port.number"),
                    n,
                    "must be between 1 and 65535, inclusive",
                )),
                _ => {}
            }
        }
        (None, Some(_)) => {}
    }
}

fn validate_ingress(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(b) = spec.get("defaultBackend").filter(|b| b.is_object()) {
        backend("spec.defaultBackend", b, errs);
    }
    let rules = arr(&spec, "/rules");
    if rules.is_empty() && spec.get("defaultBackend").is_none_or(Value::is_null) {
        errs.push(FieldError::invalid_go(
            "spec",
            "networking.IngressSpec{...}",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(host) = str_of(rule, "host") {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let mut host_errs = Vec::new();
            crate::api::validation::check_subdomain(
                &format!("spec.rules[{i}].host"),
                bare,
                &mut host_errs,
            );
            if !host_errs.is_empty() {
                errs.push(FieldError::invalid(
                    format!("spec.rules[{i}].host"),
                    host,
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                ));
            }
        }
        for (j, p) in arr(rule, "/http/paths").iter().enumerate() {
            let path = format!("spec.rules[{i}].http.paths[{j}]");
            match str_of(p, "pathType") {
                None | Some("") => errs.push(FieldError::required(
                    format!("{path}.pathType"),
                    "pathType must be specified",
                )),
                Some(t) if !PATH_TYPES.contains(&t) => errs.push(FieldError::not_supported(
                    format!("{path}.pathType"),
                    t,
                    PATH_TYPES,
                )),
                Some(t) => {
                    let value = str_of(p, "path").unwrap_or_default();
                    if t != "ImplementationSpecific" && !value.starts_with('/') {
                        errs.push(FieldError::invalid(
                            format!("{path}.path"),
                            value,
                            "must be an absolute path",
                        ));
                    }
                }
            }
            match p.get("backend").filter(|b| b.is_object()) {
                None => errs.push(FieldError::required(format!("{path}.backend"), "")),
                Some(b) => backend(&format!("{path}.backend"), b, errs),
            }
        }
    }
}

fn ingress_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let rules = arr(obj, "/spec/rules");
    let hosts: Vec<&str> = rules
        .iter()
        .filter_map(|r| str_of(r, "host").filter(|h| !h.is_empty()))
        .take(3)
        .collect();
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if rules.len() > 3 {
        format!("{} + {} more...", hosts.join(","), rules.len() - 3)
    } else {
        hosts.join(",")
    };
    let mut addresses: Vec<&str> = arr(obj, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| {
            str_of(i, "ip")
                .filter(|s| !s.is_empty())
                .or_else(|| str_of(i, "hostname"))
        })
        .collect();
    addresses.dedup();
    let ports = if arr(obj, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(obj),
        json!(
            obj.pointer("/spec/ingressClassName")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
        ),
        json!(hosts),
        json!(addresses.join(",")),
        json!(ports),
        age(obj, now),
    ]
}

fn ingress_status(obj: &mut Value) {
    set_default(ensure_map(obj, "status"), "loadBalancer", json!({}));
}

pub static INGRESS: Hooks = Hooks {
    defaults: nothing,
    initial_status: ingress_status,
    validate: validate_ingress,
    columns: &[
        NAME,
        (
            "Class",
            "string",
            "",
            0,
            "The name of the IngressClass resource that should be used for additional configuration",
        ),
        (
            "Hosts",
            "string",
            "",
            0,
            "Hosts that incoming requests are matched against before the ingress rule",
        ),
        (
            "Address",
            "string",
            "",
            0,
            "Address is a list containing ingress points for the load-balancer",
        ),
        (
            "Ports",
            "string",
            "",
            0,
            "Ports of TLS configurations that open",
        ),
        AGE,
    ],
    cells: ingress_cells,
};

// ----- IngressClass -----

fn validate_ingress_class(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    if obj
        .pointer("/spec/controller")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.push(FieldError::required("spec.controller", ""));
    }
    if let Some(old) = old {
        super::immutable(
            "spec.controller",
            obj.pointer("/spec/controller"),
            old.pointer("/spec/controller"),
            errs,
        );
    }
}

fn ingress_class_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let parameters = match obj.pointer("/spec/parameters").filter(|p| p.is_object()) {
        None => "<none>".to_string(),
        Some(p) => {
            let mut kind = str_at(p, "/kind").to_string();
            if let Some(g) = str_of(p, "apiGroup") {
                kind = format!("{kind}.{g}");
            }
            format!("{kind}/{}", str_at(p, "/name"))
        }
    };
    vec![
        name(obj),
        json!(str_at(obj, "/spec/controller")),
        json!(parameters),
        age(obj, now),
    ]
}

pub static INGRESS_CLASS: Hooks = Hooks {
    defaults: nothing,
    initial_status: nothing,
    validate: validate_ingress_class,
    columns: &[
        NAME,
        (
            "Controller",
            "string",
            "",
            0,
            "Controller that is responsible for handling this class",
        ),
        (
            "Parameters",
            "string",
            "",
            0,
            "A reference to a resource with additional parameters",
        ),
        AGE,
    ],
    cells: ingress_class_cells,
};
