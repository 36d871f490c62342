//! Server-side defaulting, as the real API server's `SetDefaults_*` functions and admission do it.
//! Describe output depends on these (`Port: <unset> 80/TCP`, `Type: ClusterIP`, ...).

use serde_json::{Map, Value, json};

use super::object::{ensure_map, set_default};
use super::resources::{RESOURCES, id};

/// Fill defaults into a new or updated object of resource `rt`.
pub fn apply(rt: usize, obj: &mut Value) {
    omit_empty_metadata(obj);
    match rt {
        id::PODS => {
            let spec = ensure_map(obj, "spec");
            pod_spec(spec);
            // The DefaultTolerationSeconds admission plugin.
            let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
            if let Some(list) = tolerations.as_array_mut() {
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    let present = list.iter().any(|t| {
                        t.get("key").and_then(Value::as_str) == Some(key)
                            && t.get("effect").and_then(Value::as_str) == Some("NoExecute")
                    });
                    if !present {
                        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
            }
            set_default(spec, "priority", json!(0));
        }
        id::SERVICES => service(obj),
        id::REPLICATION_CONTROLLERS => {
            let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
            let spec = ensure_map(obj, "spec");
            set_default(spec, "replicas", json!(1));
            if let Some(labels) = &template_labels {
                let empty = spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty());
                if empty {
                    spec.insert("selector".into(), labels.clone());
                }
            }
            template(spec);
            if let Some(labels) = template_labels {
                let meta = ensure_map(obj, "metadata");
                let empty = meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty());
                if empty {
                    meta.insert("labels".into(), labels);
                }
            }
        }
        id::REPLICA_SETS => {
            let spec = ensure_map(obj, "spec");
            set_default(spec, "replicas", json!(1));
            template(spec);
        }
        id::DEPLOYMENTS => {
            let spec = ensure_map(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = ensure_map_in(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = ensure_map_in(strategy, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        id::NAMESPACES => {
            let name = obj
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            let labels = ensure_map_in(ensure_map(obj, "metadata"), "labels");
            labels.insert("kubernetes.io/metadata.name".into(), name);
            let spec = ensure_map(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
            let status = ensure_map(obj, "status");
            set_default(status, "phase", json!("Active"));
        }
        id::ENDPOINTS => {
            for subset in obj
                .get_mut("subsets")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                for port in subset
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
        id::ENDPOINT_SLICES => {
            for port in obj
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = port.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                    set_default(p, "name", json!(""));
                }
            }
        }
        _ => {
            if let Some(hooks) = RESOURCES[rt].hooks {
                (hooks.defaults)(obj);
            }
        }
    }
}

/// Status a new object starts with (the registry strategies' `PrepareForCreate`).
pub fn initial_status(rt: usize, obj: &mut Value) {
    match rt {
        id::PODS => {
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            let status = ensure_map(obj, "status");
            set_default(status, "phase", json!("Pending"));
            set_default(status, "qosClass", json!(qos));
        }
        id::REPLICATION_CONTROLLERS | id::REPLICA_SETS => {
            let status = ensure_map(obj, "status");
            set_default(status, "replicas", json!(0));
        }
        id::DEPLOYMENTS => {
            ensure_map(obj, "status");
        }
        id::SERVICES => {
            let status = ensure_map(obj, "status");
            set_default(status, "loadBalancer", json!({}));
        }
        _ => {
            if let Some(hooks) = RESOURCES[rt].hooks {
                (hooks.initial_status)(obj);
            }
        }
    }
}

pub fn ensure_map_in<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("made an object above")
}

fn template(spec: &mut Map<String, Value>) {
    let template = ensure_map_in(spec, "template");
    pod_spec(ensure_map_in(template, "spec"));
}

/// PodSpec defaults (also inside templates).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                container(c);
            }
        }
    }
}

/// Container defaults.
pub fn container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    for port in c
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

/// `Always` for `:latest` or an untagged image, else `IfNotPresent`.
pub fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn service(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        set_default(spec, "sessionAffinity", json!("None"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        if headless {
            set_default(spec, "clusterIPs", json!(["None"]));
        }
    } else {
        set_default(spec, "sessionAffinity", json!("None"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for port in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
            if let Some(number) = p.get("port").cloned() {
                set_default(p, "targetPort", number);
            }
        }
    }
}

/// BestEffort / Burstable / Guaranteed from the containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let relevant = |m: Option<&Map<String, Value>>| {
            m.map(|m| m.keys().any(|k| k == "cpu" || k == "memory"))
                .unwrap_or(false)
        };
        if relevant(requests) || relevant(limits) {
            any = true;
        }
        let full_limits = limits.is_some_and(|l| l.contains_key("cpu") && l.contains_key("memory"));
        let requests_match = requests.is_none_or(|r| {
            ["cpu", "memory"]
                .iter()
                .all(|k| r.get(*k).is_none() || r.get(*k) == limits.and_then(|l| l.get(*k)))
        });
        if !full_limits || !requests_match {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Drop the metadata lists and maps that the real API server omits when empty (Go's
/// `omitempty`): a strategic-merge `$patch: delete` of the last owner reference, as the garbage
/// collector sends for `--cascade=orphan`, leaves no `ownerReferences: []` behind.
fn omit_empty_metadata(obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    for key in ["ownerReferences", "finalizers", "labels", "annotations"] {
        let empty = match meta.get(key) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            meta.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_lists_and_maps_are_omitted() {
        let mut obj = json!({"metadata": {"name": "p", "ownerReferences": [], "finalizers": [],
            "labels": {}, "annotations": null}});
        omit_empty_metadata(&mut obj);
        assert_eq!(obj, json!({"metadata": {"name": "p"}}));
        let mut kept = json!({"metadata": {"finalizers": ["f"], "labels": {"a": "b"}}});
        omit_empty_metadata(&mut kept);
        assert_eq!(
            kept,
            json!({"metadata": {"finalizers": ["f"], "labels": {"a": "b"}}})
        );
    }

    fn defaulted(rt: usize, mut obj: Value) -> String {
        apply(rt, &mut obj);
        initial_status(rt, &mut obj);
        serde_json::to_string_pretty(&obj).unwrap()
    }

    #[test]
    fn pod_rc_service_deployment() {
        let out = [
            defaulted(
                id::PODS,
                json!({"metadata": {"name": "p"}, "spec": {"containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "redis:7", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
            ),
            defaulted(
                id::REPLICATION_CONTROLLERS,
                json!({"metadata": {"name": "nginx-controller"}, "spec": {"replicas": 2, "template": {
                    "metadata": {"labels": {"name": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:latest", "ports": [{"containerPort": 80}]}]}}}}),
            ),
            defaulted(
                id::SERVICES,
                json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "selector": {"name": "nginx"},
                    "ports": [{"port": 8000, "targetPort": 80}, {"port": 53, "protocol": "UDP", "name": "dns"}]}}),
            ),
            defaulted(
                id::DEPLOYMENTS,
                json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
                    "metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "registry:5000/app@sha256:abc"}]}}}}),
            ),
            defaulted(id::NAMESPACES, json!({"metadata": {"name": "team"}})),
        ]
        .join("\n---\n");
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn pull_policies_and_qos() {
        assert_eq!(pull_policy("nginx"), "Always");
        assert_eq!(pull_policy("nginx:latest"), "Always");
        assert_eq!(pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(pull_policy("localhost:5000/nginx:1"), "IfNotPresent");
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
    }
}
