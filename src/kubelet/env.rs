//! A container's environment, as the kubelet builds it: the pod's service links for the
//! `kubernetes` Service, then the container's `env` in order, with `valueFrom.fieldRef`
//! resolved from the pod and `$(VAR)` references expanded; the same expansion applies to
//! `command` and `args`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::volumes::content::Objects;

/// Why an environment could not be built (the kubelet reports `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// Values a fieldRef may read that are not in the pod object yet (the kubelet knows them).
#[derive(Debug, Clone, Default)]
pub struct Downward {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
}

/// Resolve `metadata.name`, `status.podIP`, `metadata.labels['app']`, ...
pub fn field_ref(pod: &Pod, path: &str, downward: &Downward) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => downward.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => downward.host_ip.clone(),
        other => {
            return Err(EnvError(format!(
                "unsupported fieldRef fieldPath {other:?}"
            )));
        }
    };
    Ok(value.unwrap_or_default())
}

/// Expand `$(NAME)` from `vars`; `$$(NAME)` stays literal `$(NAME)`; unknown names stay as is.
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        if let Some(inner) = rest.strip_prefix("$(")
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            if let Some((_, value)) = vars.iter().rev().find(|(k, _)| k == name) {
                out.push_str(value);
                rest = &inner[end + 1..];
                continue;
            }
        }
        out.push('$');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

/// The environment of `container` as the kubelet makes it: `base` (service links), then
/// `envFrom` (ConfigMaps and Secrets, with their prefix), then `env` in order, later values
/// replacing earlier ones. `objects` holds the ConfigMaps and Secrets the pod names.
pub fn environment(
    pod: &Pod,
    container: &Container,
    base: &[(String, String)],
    objects: &Objects,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut vars: Vec<(String, String)> = base.to_vec();
    let set = |vars: &mut Vec<(String, String)>, name: String, value: String| {
        vars.retain(|(k, _)| *k != name);
        vars.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(r) = &from.config_map_ref {
            match objects.config_maps.get(&r.name) {
                Some(cm) => cm.data.clone().unwrap_or_default(),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError(format!("configmap \"{}\" not found", r.name))),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secrets.get(&r.name) {
                Some(s) => s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError(format!("secret \"{}\" not found", r.name))),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            set(&mut vars, format!("{prefix}{key}"), value);
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, value_from) {
            (Some(v), _) => expand(v, &vars),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path, &objects.downward)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.config_maps.get(&r.name) {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None if optional => continue,
                        None => {
                            return Err(EnvError(format!("configmap \"{}\" not found", r.name)));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.secrets.get(&r.name) {
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None if optional => continue,
                        None => {
                            return Err(EnvError(format!("secret \"{}\" not found", r.name)));
                        }
                    }
                } else {
                    // resourceFieldRef: kemu sets no resource limits, so there is nothing to read.
                    String::new()
                }
            }
            (None, None) => String::new(),
        };
        set(&mut vars, name.clone(), resolved);
    }
    Ok(vars)
}

/// The service-link variables of a Service, as the kubelet injects them (`enableServiceLinks`),
/// e.g. `KUBERNETES_SERVICE_HOST=192.168.3.1`, `KUBERNETES_PORT_443_TCP_PORT=443`.
pub fn service_links(
    name: &str,
    cluster_ip: &str,
    ports: &[(Option<String>, i32, String)],
) -> Vec<(String, String)> {
    let prefix = name.to_ascii_uppercase().replace('-', "_");
    let mut vars = Vec::new();
    let Some((_, first_port, first_proto)) = ports.first() else {
        return vars;
    };
    vars.push((format!("{prefix}_SERVICE_HOST"), cluster_ip.to_string()));
    vars.push((format!("{prefix}_SERVICE_PORT"), first_port.to_string()));
    for (port_name, port, _) in ports {
        if let Some(n) = port_name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((
                format!(
                    "{prefix}_SERVICE_PORT_{}",
                    n.to_ascii_uppercase().replace('-', "_")
                ),
                port.to_string(),
            ));
        }
    }
    let proto = first_proto.to_ascii_lowercase();
    vars.push((
        format!("{prefix}_PORT"),
        format!("{proto}://{cluster_ip}:{first_port}"),
    ));
    for (_, port, protocol) in ports {
        let upper = protocol.to_ascii_uppercase();
        let lower = protocol.to_ascii_lowercase();
        let key = format!("{prefix}_PORT_{port}_{upper}");
        vars.push((key.clone(), format!("{lower}://{cluster_ip}:{port}")));
        vars.push((format!("{key}_PROTO"), lower));
        vars.push((format!("{key}_PORT"), port.to_string()));
        vars.push((format!("{key}_ADDR"), cluster_ip.to_string()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "192.168.0.202", "containers": [{
                "name": "c", "image": "nginx",
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "GREETING", "value": "hello $(POD) at $(IP), $$(POD) stays, $(NOPE) too"}
                ]}]}
        }))
        .unwrap()
    }

    #[test]
    fn resolves_field_refs_and_expands_references() {
        let pod = pod();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let downward = Downward {
            pod_ip: Some("172.16.2.5".into()),
            host_ip: Some("192.168.0.202".into()),
        };
        let objects = Objects {
            downward,
            ..Default::default()
        };
        let env = environment(&pod, container, &[], &objects).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("IP"), Some("172.16.2.5"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(
            get("GREETING"),
            Some("hello web-1 at 172.16.2.5, $(POD) stays, $(NOPE) too")
        );
    }

    #[test]
    fn kubernetes_service_links() {
        let vars = service_links(
            "kubernetes",
            "192.168.3.1",
            &[(Some("https".into()), 443, "TCP".into())],
        );
        let text: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                "KUBERNETES_SERVICE_HOST=192.168.3.1",
                "KUBERNETES_SERVICE_PORT=443",
                "KUBERNETES_SERVICE_PORT_HTTPS=443",
                "KUBERNETES_PORT=tcp://192.168.3.1:443",
                "KUBERNETES_PORT_443_TCP=tcp://192.168.3.1:443",
                "KUBERNETES_PORT_443_TCP_PROTO=tcp",
                "KUBERNETES_PORT_443_TCP_PORT=443",
                "KUBERNETES_PORT_443_TCP_ADDR=192.168.3.1",
            ]
        );
    }
}
