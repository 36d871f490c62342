//! Server-side printing: `meta.k8s.io/v1 Table` with the real API server's columns and cell
//! formats (`pkg/printers/internalversion/printers.go`), so `kubectl get` shows `READY STATUS
//! RESTARTS`, `-o wide` adds the priority-1 columns, and `get all` prefixes `pod/` (the name column
//! has `format: name`). The server always renders the wide cells; kubectl hides priority-1 columns.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::object::{parse_time, str_at};
use super::resources::{RESOURCES, id};
use super::selectors::{format_label_selector, format_labels};

/// What each row carries in `object` (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// (name, type, format, priority, description)
pub type Col = (&'static str, &'static str, &'static str, u8, &'static str);

pub const NAME: Col = (
    "Name",
    "string",
    "name",
    0,
    "Name must be unique within a namespace.",
);
pub const AGE: Col = (
    "Age",
    "string",
    "",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

pub const CONTAINERS: Col = (
    "Containers",
    "string",
    "",
    1,
    "Names of each container in the template.",
);
pub const IMAGES: Col = (
    "Images",
    "string",
    "",
    1,
    "Images referenced by each container in the template.",
);

fn column_defs(rt: usize) -> Vec<Col> {
    let (containers, images) = (CONTAINERS, IMAGES);
    match rt {
        id::PODS => vec![
            NAME,
            (
                "Ready",
                "string",
                "",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            (
                "Status",
                "string",
                "",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            (
                "Restarts",
                "string",
                "",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            (
                "IP",
                "string",
                "",
                1,
                "podIP is an IP address allocated to the pod.",
            ),
            (
                "Node",
                "string",
                "",
                1,
                "NodeName indicates in which node this pod is scheduled.",
            ),
            (
                "Nominated Node",
                "string",
                "",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            (
                "Readiness Gates",
                "string",
                "",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        id::SERVICES => vec![
            NAME,
            (
                "Type",
                "string",
                "",
                0,
                "type determines how the Service is exposed.",
            ),
            (
                "Cluster-IP",
                "string",
                "",
                0,
                "clusterIP is the IP address of the service.",
            ),
            (
                "External-IP",
                "string",
                "",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            (
                "Port(s)",
                "string",
                "",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            (
                "Selector",
                "string",
                "",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        id::REPLICATION_CONTROLLERS | id::REPLICA_SETS => vec![
            NAME,
            (
                "Desired",
                "integer",
                "",
                0,
                "Replicas is the number of desired replicas.",
            ),
            (
                "Current",
                "integer",
                "",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            (
                "Ready",
                "integer",
                "",
                0,
                "The number of ready replicas for this replication controller.",
            ),
            AGE,
            containers,
            images,
            (
                "Selector",
                "string",
                "",
                1,
                "Selector is a label query over pods that should match the Replicas count.",
            ),
        ],
        id::DEPLOYMENTS => vec![
            NAME,
            (
                "Ready",
                "string",
                "",
                0,
                "Number of the pod with ready state",
            ),
            (
                "Up-to-date",
                "string",
                "",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                "",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            containers,
            images,
            ("Selector", "string", "", 1, "Label selector for pods."),
        ],
        id::NODES => vec![
            NAME,
            ("Status", "string", "", 0, "The status of the node"),
            ("Roles", "string", "", 0, "The roles of the node"),
            AGE,
            (
                "Version",
                "string",
                "",
                0,
                "Kubelet Version reported by the node.",
            ),
            (
                "Internal-IP",
                "string",
                "",
                1,
                "List of addresses reachable to the node.",
            ),
            (
                "External-IP",
                "string",
                "",
                1,
                "List of addresses reachable to the node.",
            ),
            (
                "OS-Image",
                "string",
                "",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            (
                "Kernel-Version",
                "string",
                "",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            (
                "Container-Runtime",
                "string",
                "",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        id::NAMESPACES => vec![
            NAME,
            ("Status", "string", "", 0, "The status of the namespace"),
            AGE,
        ],
        id::ENDPOINTS => vec![
            NAME,
            (
                "Endpoints",
                "string",
                "",
                0,
                "Endpoints is the list of endpoints this service points to.",
            ),
            AGE,
        ],
        id::EVENTS => vec![
            (
                "Last Seen",
                "string",
                "",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            (
                "Type",
                "string",
                "",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            (
                "Reason",
                "string",
                "",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            (
                "Object",
                "string",
                "",
                0,
                "The object that this event is about.",
            ),
            (
                "Subobject",
                "string",
                "",
                1,
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
            ),
            (
                "Source",
                "string",
                "",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            (
                "Message",
                "string",
                "",
                0,
                "A human-readable description of the status of this operation.",
            ),
            (
                "First Seen",
                "string",
                "",
                1,
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            (
                "Count",
                "string",
                "",
                1,
                "The number of times this event has occurred.",
            ),
            (
                "Name",
                "string",
                "name",
                1,
                "Name must be unique within a namespace.",
            ),
        ],
        id::ENDPOINT_SLICES => vec![
            NAME,
            (
                "AddressType",
                "string",
                "",
                0,
                "The IP protocol for this slice",
            ),
            ("Ports", "string", "", 0, "The ports for this slice"),
            (
                "Endpoints",
                "string",
                "",
                0,
                "First 3 endpoints for this slice",
            ),
            AGE,
        ],
        id::LEASES => vec![
            NAME,
            ("Holder", "string", "", 0, "The holder of this lease"),
            AGE,
        ],
        _ => match RESOURCES[rt].hooks {
            Some(hooks) => hooks.columns.to_vec(),
            None => vec![NAME, AGE],
        },
    }
}

/// `columnDefinitions` of the table for resource `rt`.
pub fn columns(rt: usize) -> Value {
    Value::Array(
        column_defs(rt)
            .into_iter()
            .map(|(name, ty, format, priority, description)| {
                json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
            })
            .collect(),
    )
}

/// The row of one object.
pub fn row(rt: usize, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let mut row = json!({"cells": cells(rt, obj, now)});
    if rt == id::PODS {
        let phase = str_at(obj, "/status/phase");
        if phase == "Succeeded" || phase == "Failed" {
            row["conditions"] = json!([{"type": "Completed", "status": "True", "reason": phase, "message": "The pod has completed successfully."}]);
        }
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => row["object"] = obj.clone(),
    }
    row
}

/// A whole Table.
pub fn table<'a>(
    rt: usize,
    objects: impl IntoIterator<Item = &'a Value>,
    include: IncludeObject,
    resource_version: &str,
    now: Timestamp,
) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| row(rt, o, include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

/// `5m`, `2d3h`: apimachinery's `duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `translateTimestampSince`: `<unknown>` for a missing time.
fn since(ts: Option<&str>, now: Timestamp) -> String {
    match ts.filter(|s| !s.is_empty()).and_then(parse_time) {
        None => "<unknown>".into(),
        Some(t) => human_duration((now.as_second() - t.as_second()).max(-2)),
    }
}

pub fn age(obj: &Value, now: Timestamp) -> Value {
    Value::String(since(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now,
    ))
}

pub fn name(obj: &Value) -> Value {
    Value::String(str_at(obj, "/metadata/name").to_string())
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn arr<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The cells of one object's row.
pub fn cells(rt: usize, obj: &Value, now: Timestamp) -> Vec<Value> {
    match rt {
        id::PODS => pod_cells(obj, now),
        id::SERVICES => service_cells(obj, now),
        id::REPLICATION_CONTROLLERS | id::REPLICA_SETS => {
            let (containers, images) = template_containers(obj, "/spec/template/spec/containers");
            let selector = if rt == id::REPLICATION_CONTROLLERS {
                format_labels(obj.pointer("/spec/selector").and_then(Value::as_object))
            } else {
                format_label_selector(obj.pointer("/spec/selector"))
            };
            vec![
                name(obj),
                json!(int(obj, "/spec/replicas")),
                json!(int(obj, "/status/replicas")),
                json!(int(obj, "/status/readyReplicas")),
                age(obj, now),
                json!(containers),
                json!(images),
                json!(selector),
            ]
        }
        id::DEPLOYMENTS => {
            let (containers, images) = template_containers(obj, "/spec/template/spec/containers");
            vec![
                name(obj),
                json!(format!(
                    "{}/{}",
                    int(obj, "/status/readyReplicas"),
                    int(obj, "/spec/replicas")
                )),
                json!(int(obj, "/status/updatedReplicas")),
                json!(int(obj, "/status/availableReplicas")),
                age(obj, now),
                json!(containers),
                json!(images),
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        id::NODES => node_cells(obj, now),
        id::NAMESPACES => vec![
            name(obj),
            json!(str_at(obj, "/status/phase")),
            age(obj, now),
        ],
        id::ENDPOINTS => vec![name(obj), json!(format_endpoints(obj)), age(obj, now)],
        id::EVENTS => event_cells(obj, now),
        id::ENDPOINT_SLICES => {
            let ports: Vec<String> = arr(obj, "/ports")
                .iter()
                .map(|p| {
                    match (
                        p.get("port").and_then(Value::as_i64),
                        p.get("name").and_then(Value::as_str),
                    ) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(n)) => n.to_string(),
                        _ => "*".into(),
                    }
                })
                .collect();
            let addresses: Vec<String> = arr(obj, "/endpoints")
                .iter()
                .flat_map(|e| {
                    arr(e, "/addresses")
                        .iter()
                        .filter_map(|a| a.as_str().map(String::from))
                })
                .collect();
            vec![
                name(obj),
                json!(str_at(obj, "/addressType")),
                json!(list_with_more(&ports)),
                json!(list_with_more(&addresses)),
                age(obj, now),
            ]
        }
        id::LEASES => vec![
            name(obj),
            json!(str_at(obj, "/spec/holderIdentity")),
            age(obj, now),
        ],
        _ => match RESOURCES[rt].hooks {
            Some(hooks) => (hooks.cells)(obj, now),
            None => vec![name(obj), age(obj, now)],
        },
    }
}

fn list_with_more(items: &[String]) -> String {
    const MAX: usize = 3;
    let shown = items
        .iter()
        .take(MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if items.len() > MAX {
        format!("{shown} + {} more...", items.len() - MAX)
    } else if shown.is_empty() {
        "<unset>".into()
    } else {
        shown
    }
}

/// The time at `pointer`, if set and valid.
pub fn parse_since(obj: &Value, pointer: &str) -> Option<Timestamp> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// Container names and images of the container list at `pointer` (`layoutContainerCells`).
pub fn template_containers(obj: &Value, pointer: &str) -> (String, String) {
    let containers = arr(obj, pointer);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let spec_containers = arr(pod, "/spec/containers");
    let init_specs = arr(pod, "/spec/initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| str_at(c, "/name") == name && str_at(c, "/restartPolicy") == "Always")
    };
    let total = spec_containers.len()
        + init_specs
            .iter()
            .filter(|c| str_at(c, "/restartPolicy") == "Always")
            .count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut reason = str_at(pod, "/status/phase").to_string();
    if !str_at(pod, "/status/reason").is_empty() {
        reason = str_at(pod, "/status/reason").to_string();
    }
    let conditions = arr(pod, "/status/conditions");
    if conditions.iter().any(|c| {
        str_at(c, "/type") == "PodScheduled"
            && str_at(c, "/status") == "False"
            && str_at(c, "/reason") == "SchedulingGated"
    }) {
        reason = "SchedulingGated".into();
    }
    let bump_last = |c: &Value, last: &mut Option<Timestamp>| {
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time)
            && last.is_none_or(|l| l < t)
        {
            *last = Some(t);
        }
    };
    let init_statuses = arr(pod, "/status/initContainerStatuses");
    let mut initializing = false;
    let mut sidecar_restarts = 0i64;
    let mut sidecar_last: Option<Timestamp> = None;
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += int(c, "/restartCount");
        bump_last(c, &mut last_restart);
        let sidecar = is_sidecar(str_at(c, "/name"));
        if sidecar {
            sidecar_restarts += int(c, "/restartCount");
            bump_last(c, &mut sidecar_last);
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = str_at(c, "/state/waiting/reason");
        if terminated.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && c.pointer("/started").and_then(Value::as_bool) == Some(true) {
            if c.pointer("/ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = if !str_at(t, "/reason").is_empty() {
                format!("Init:{}", str_at(t, "/reason"))
            } else if int(t, "/signal") != 0 {
                format!("Init:Signal:{}", int(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", int(t, "/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
        }
        initializing = true;
        break;
    }
    let initialized = conditions
        .iter()
        .any(|c| str_at(c, "/type") == "Initialized" && str_at(c, "/status") == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last;
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += int(c, "/restartCount");
            bump_last(c, &mut last_restart);
            let waiting = str_at(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                reason = if !str_at(t, "/reason").is_empty() {
                    str_at(t, "/reason").to_string()
                } else if int(t, "/signal") != 0 {
                    format!("Signal:{}", int(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int(t, "/exitCode"))
                };
            } else if c.pointer("/ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = str_at(pod, "/status/phase");
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        if str_at(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration(now.as_second() - t.as_second())
        ),
        _ => restarts.to_string(),
    };
    let pod_ip = arr(pod, "/status/podIPs")
        .first()
        .map(|p| str_at(p, "/ip").to_string())
        .unwrap_or_else(|| str_at(pod, "/status/podIP").to_string());
    let gates = arr(pod, "/spec/readinessGates");
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_gates = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, "/conditionType");
                conditions
                    .iter()
                    .any(|c| str_at(c, "/type") == ty && str_at(c, "/status") == "True")
            })
            .count();
        format!("{true_gates}/{}", gates.len())
    };
    vec![
        name(pod),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        age(pod, now),
        json!(or_none(pod_ip)),
        json!(or_none(str_at(pod, "/spec/nodeName").to_string())),
        json!(or_none(
            str_at(pod, "/status/nominatedNodeName").to_string()
        )),
        json!(gates_cell),
    ]
}

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    let ty = str_at(svc, "/spec/type");
    let cluster_ip = or_none(str_at(svc, "/spec/clusterIP").to_string());
    let external_ips: Vec<&str> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" | "" => or_none(external_ips.join(",")),
        "LoadBalancer" => {
            let mut ips: Vec<String> = arr(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if !str_at(i, "/ip").is_empty() {
                        str_at(i, "/ip")
                    } else {
                        str_at(i, "/hostname")
                    }
                    .to_string()
                })
                .collect();
            let pending = ips.is_empty();
            ips.extend(external_ips.iter().map(|s| s.to_string()));
            if pending && external_ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = str_at(p, "/protocol");
            let node_port = int(p, "/nodePort");
            if node_port > 0 {
                format!("{}:{node_port}/{protocol}", int(p, "/port"))
            } else {
                format!("{}/{protocol}", int(p, "/port"))
            }
        })
        .collect();
    vec![
        name(svc),
        json!(ty),
        json!(cluster_ip),
        json!(external),
        json!(or_none(ports.join(","))),
        age(svc, now),
        json!(format_labels(
            svc.pointer("/spec/selector").and_then(Value::as_object)
        )),
    ]
}

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    let mut status: Vec<&str> = Vec::new();
    match arr(node, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == "Ready")
    {
        Some(c) if str_at(c, "/status") == "True" => status.push("Ready"),
        Some(_) => status.push("NotReady"),
        None => status.push("Unknown"),
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_string());
            }
        } else if k == "kubernetes.io/role"
            && let Some(v) = v.as_str().filter(|v| !v.is_empty())
        {
            roles.push(v.to_string());
        }
    }
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        arr(node, "/status/addresses")
            .iter()
            .find(|a| str_at(a, "/type") == ty)
            .map(|a| str_at(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |key: &str| {
        let v = str_at(node, &format!("/status/nodeInfo/{key}"));
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        name(node),
        json!(status.join(",")),
        json!(or_none(roles.join(","))),
        age(node, now),
        json!(str_at(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// `ip:port,ip:port + N more...` as `formatEndpoints` renders it.
fn format_endpoints(ep: &Value) -> String {
    let subsets = arr(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr(ss, "/addresses");
        let ports = arr(ss, "/ports");
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, "/ip").to_string());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                let ip = str_at(a, "/ip");
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                list.push(format!("{host}:{}", int(p, "/port")));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    let first_ts = ev
        .pointer("/firstTimestamp")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let first = match first_ts {
        Some(t) => since(Some(t), now),
        None => since(ev.pointer("/eventTime").and_then(Value::as_str), now),
    };
    let mut last = match ev
        .pointer("/lastTimestamp")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int(ev, "/count");
    if let Some(series) = ev.get("series").filter(|s| s.is_object()) {
        last = since(
            series.pointer("/lastObservedTime").and_then(Value::as_str),
            now,
        );
        count = int(series, "/count");
    } else if count == 0 {
        count = 1;
    }
    let kind = str_at(ev, "/involvedObject/kind").to_lowercase();
    let obj_name = str_at(ev, "/involvedObject/name");
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let component = [
        str_at(ev, "/source/component"),
        str_at(ev, "/reportingComponent"),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or_default();
    let instance = [str_at(ev, "/source/host"), str_at(ev, "/reportingInstance")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(str_at(ev, "/type")),
        json!(str_at(ev, "/reason")),
        json!(target),
        json!(str_at(ev, "/involvedObject/fieldPath")),
        json!(source),
        json!(str_at(ev, "/message").trim()),
        json!(first),
        json!(count),
        name(ev),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2025-01-10T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn durations() {
        let cases = [
            -5,
            -1,
            0,
            59,
            119,
            120,
            125,
            600,
            10799,
            10800,
            7 * 3600 + 60,
            30 * 3600,
            50 * 3600,
            9 * 86400,
            800 * 86400,
            3000 * 86400,
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|s| format!("{s} -> {}", human_duration(*s)))
            .collect();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out.join("\n")));
    }

    #[test]
    fn rows_of_every_kind() {
        let created = "2025-01-10T11:55:00Z";
        let objects = [
            (
                id::PODS,
                json!({"metadata": {"name": "running", "creationTimestamp": created}, "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
                "status": {"phase": "Running", "podIP": "172.16.1.5", "podIPs": [{"ip": "172.16.1.5"}], "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-10T11:57:00Z"}}},
                    {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
            ),
            (
                id::PODS,
                json!({"metadata": {"name": "crashing", "creationTimestamp": created}, "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
            ),
            (
                id::PODS,
                json!({"metadata": {"name": "creating", "creationTimestamp": created}, "spec": {"nodeName": "n2", "containers": [{"name": "a"}]},
                "status": {"phase": "Pending", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}}),
            ),
            (
                id::PODS,
                json!({"metadata": {"name": "done", "creationTimestamp": created}, "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}),
            ),
            (
                id::PODS,
                json!({"metadata": {"name": "leaving", "creationTimestamp": created, "deletionTimestamp": "2025-01-10T11:59:00Z"}, "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Running"}}),
            ),
            (
                id::PODS,
                json!({"metadata": {"name": "pending"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}}),
            ),
            (
                id::SERVICES,
                json!({"metadata": {"name": "nginx-service-nodeport", "creationTimestamp": created}, "spec": {"type": "NodePort", "clusterIP": "192.168.3.91",
                "ports": [{"port": 8000, "nodePort": 32606, "protocol": "TCP"}], "selector": {"name": "nginx"}}}),
            ),
            (
                id::SERVICES,
                json!({"metadata": {"name": "headless", "creationTimestamp": created}, "spec": {"type": "ClusterIP", "clusterIP": "None"}}),
            ),
            (
                id::SERVICES,
                json!({"metadata": {"name": "lb", "creationTimestamp": created}, "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.3",
                "ports": [{"port": 80, "nodePort": 30001, "protocol": "TCP"}, {"port": 443, "nodePort": 30443, "protocol": "TCP"}]}}),
            ),
            (
                id::REPLICATION_CONTROLLERS,
                json!({"metadata": {"name": "nginx-controller", "creationTimestamp": created}, "spec": {"replicas": 2, "selector": {"name": "nginx"},
                "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}, "status": {"replicas": 2, "readyReplicas": 1}}),
            ),
            (
                id::DEPLOYMENTS,
                json!({"metadata": {"name": "web", "creationTimestamp": "2025-01-08T09:00:00Z"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
            ),
            (
                id::NODES,
                json!({"metadata": {"name": "192.168.0.201", "creationTimestamp": created, "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": ""}},
                "spec": {"unschedulable": true},
                "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "192.168.0.201"}],
                    "nodeInfo": {"kubeletVersion": "v1.32.4", "osImage": "kemu", "kernelVersion": "6.18.0", "containerRuntimeVersion": "kemu://0.1.0"}}}),
            ),
            (
                id::NODES,
                json!({"metadata": {"name": "n2"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            ),
            (
                id::ENDPOINTS,
                json!({"metadata": {"name": "many"}, "subsets": [{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}, {"ip": "10.1.0.3"}, {"ip": "10.1.0.4"}],
                "ports": [{"port": 80}, {"port": 443}]}]}),
            ),
            (id::ENDPOINTS, json!({"metadata": {"name": "empty"}})),
            (
                id::EVENTS,
                json!({"metadata": {"name": "p.1"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Scheduled", "type": "Normal",
                "message": "Successfully assigned default/p to n1 ", "source": {"component": "default-scheduler"}, "firstTimestamp": "2025-01-10T11:00:00Z", "lastTimestamp": "2025-01-10T11:58:00Z", "count": 3}),
            ),
            (
                id::NAMESPACES,
                json!({"metadata": {"name": "default", "creationTimestamp": "2024-12-01T00:00:00Z"}, "status": {"phase": "Active"}}),
            ),
            (
                id::ENDPOINT_SLICES,
                json!({"metadata": {"name": "s-abc"}, "addressType": "IPv4", "ports": [{"name": "", "port": 80}],
                "endpoints": [{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.2"]}]}),
            ),
            (
                id::LEASES,
                json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}),
            ),
        ];
        let mut out = String::new();
        for (rt, obj) in &objects {
            out.push_str(&format!(
                "{}\n",
                serde_json::to_string(&cells(*rt, obj, now())).unwrap()
            ));
        }
        let t = table(
            id::SERVICES,
            [&objects[6].1],
            IncludeObject::Metadata,
            "42",
            now(),
        );
        out.push_str(&serde_json::to_string_pretty(&t).unwrap());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }
}
