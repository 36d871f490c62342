//! apps/v1 DaemonSet, StatefulSet and ControllerRevision.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Hooks, arr, immutable, non_negative, str_of};
use crate::api::defaults::{ensure_map_in, pod_spec as default_pod_spec};
use crate::api::object::{ensure_map, set_default};
use crate::api::selectors::{format_label_selector, format_labels, from_label_selector};
use crate::api::status::FieldError;
use crate::api::table::{AGE, CONTAINERS, IMAGES, NAME, age, name, template_containers};
use crate::api::validation;

fn template_defaults(spec: &mut serde_json::Map<String, Value>) {
    let template = ensure_map_in(spec, "template");
    default_pod_spec(ensure_map_in(template, "spec"));
}

/// A workload's selector: present, not empty, matching its template, and immutable.
fn selector(kind: &str, spec: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    match spec.get("selector").filter(|s| s.is_object()) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let parsed = from_label_selector(sel);
            if parsed.is_empty() {
                errs.push(FieldError::invalid_go(
                    "spec.selector",
                    format_label_selector(Some(sel)),
                    format!("empty selector is invalid for {kind}"),
                ));
            } else if !parsed.matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)) {
                errs.push(FieldError::invalid_go(
                    "spec.template.metadata.labels",
                    validation::go_map(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(old) = old {
        immutable(
            "spec.selector",
            spec.get("selector"),
            old.pointer("/spec/selector"),
            errs,
        );
    }
}

/// The pod template of a workload whose pods always restart.
fn template(spec: &Value, errs: &mut Vec<FieldError>) {
    match spec.get("template").filter(|t| t.is_object()) {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            let pod = t.get("spec").cloned().unwrap_or(Value::Null);
            validation::pod_spec("spec.template.spec", &pod, true, errs);
        }
    }
}

// ----- DaemonSet -----

fn daemon_set_defaults(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    let strategy = ensure_map_in(spec, "updateStrategy");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = ensure_map_in(strategy, "rollingUpdate");
        set_default(ru, "maxUnavailable", json!(1));
        set_default(ru, "maxSurge", json!(0));
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    template_defaults(spec);
}

fn daemon_set_status(obj: &mut Value) {
    let status = ensure_map(obj, "status");
    for f in [
        "currentNumberScheduled",
        "numberMisscheduled",
        "desiredNumberScheduled",
        "numberReady",
    ] {
        set_default(status, f, json!(0));
    }
}

fn validate_daemon_set(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    selector("daemonset", &spec, old, errs);
    template(&spec, errs);
    let ty = spec
        .pointer("/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    if ty != "RollingUpdate" && ty != "OnDelete" {
        errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            ty,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    non_negative(&spec, "/minReadySeconds", "spec.minReadySeconds", errs);
}

fn daemon_set_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let n = |f: &str| {
        obj.pointer(&format!("/status/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (containers, images) = template_containers(obj, "/spec/template/spec/containers");
    vec![
        name(obj),
        json!(n("desiredNumberScheduled")),
        json!(n("currentNumberScheduled")),
        json!(n("numberReady")),
        json!(n("updatedNumberScheduled")),
        json!(n("numberAvailable")),
        json!(format_labels(
            obj.pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
        )),
        age(obj, now),
        json!(containers),
        json!(images),
        json!(format_label_selector(obj.pointer("/spec/selector"))),
    ]
}

pub static DAEMON_SET: Hooks = Hooks {
    defaults: daemon_set_defaults,
    initial_status: daemon_set_status,
    validate: validate_daemon_set,
    columns: &[
        NAME,
        (
            "Desired",
            "integer",
            "",
            0,
            "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
        ),
        (
            "Current",
            "integer",
            "",
            0,
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        ),
        (
            "Ready",
            "integer",
            "",
            0,
            "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
        ),
        (
            "Up-to-date",
            "integer",
            "",
            0,
            "The total number of nodes that are running updated daemon pod",
        ),
        (
            "Available",
            "integer",
            "",
            0,
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        (
            "Node Selector",
            "string",
            "",
            0,
            "NodeSelector is a selector which must be true for the pod to fit on a node.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        (
            "Selector",
            "string",
            "",
            1,
            "A label query over pods that are managed by the daemon set.",
        ),
    ],
    cells: daemon_set_cells,
};

// ----- StatefulSet -----

fn stateful_set_defaults(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = ensure_map_in(spec, "updateStrategy");
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = ensure_map_in(strategy, "rollingUpdate");
        set_default(ru, "partition", json!(0));
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    let retention = ensure_map_in(spec, "persistentVolumeClaimRetentionPolicy");
    set_default(retention, "whenDeleted", json!("Retain"));
    set_default(retention, "whenScaled", json!("Retain"));
    for claim in spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let claim_spec = ensure_map(claim, "spec");
        set_default(claim_spec, "volumeMode", json!("Filesystem"));
        ensure_map(claim, "status").insert("phase".into(), json!("Pending"));
    }
    template_defaults(spec);
}

fn stateful_set_status(obj: &mut Value) {
    let status = ensure_map(obj, "status");
    set_default(status, "replicas", json!(0));
    set_default(status, "availableReplicas", json!(0));
}

/// The spec fields an update may change (`ValidateStatefulSetUpdate`).
const STATEFUL_SET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn validate_stateful_set(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    non_negative(&spec, "/replicas", "spec.replicas", errs);
    selector("statefulset", &spec, None, errs);
    template(&spec, errs);
    let policy = str_of(&spec, "podManagementPolicy").unwrap_or("OrderedReady");
    if policy != "OrderedReady" && policy != "Parallel" {
        errs.push(FieldError::not_supported(
            "spec.podManagementPolicy",
            policy,
            &["OrderedReady", "Parallel"],
        ));
    }
    let ty = spec
        .pointer("/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    if ty != "RollingUpdate" && ty != "OnDelete" {
        errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            ty,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    for (i, claim) in arr(&spec, "/volumeClaimTemplates").iter().enumerate() {
        if claim
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(
                format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                "",
            ));
        }
    }
    if let Some(old) = old {
        let strip = |s: Option<&Value>| {
            let mut s = s.cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                for f in STATEFUL_SET_MUTABLE {
                    m.remove(*f);
                }
            }
            s
        };
        if strip(obj.get("spec")) != strip(old.get("spec")) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

fn stateful_set_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let ready = obj
        .pointer("/status/readyReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let (containers, images) = template_containers(obj, "/spec/template/spec/containers");
    vec![
        name(obj),
        json!(format!("{ready}/{desired}")),
        age(obj, now),
        json!(containers),
        json!(images),
    ]
}

pub static STATEFUL_SET: Hooks = Hooks {
    defaults: stateful_set_defaults,
    initial_status: stateful_set_status,
    validate: validate_stateful_set,
    columns: &[
        NAME,
        (
            "Ready",
            "string",
            "",
            0,
            "Number of the pod with ready state",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
    ],
    cells: stateful_set_cells,
};

// ----- ControllerRevision -----

/// `ValidateControllerRevision` and its update rule: data is mandatory and immutable, the
/// revision number is not negative.
fn validate_controller_revision(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    if obj.get("data").is_none_or(Value::is_null) {
        errs.push(FieldError::required("data", "data is mandatory"));
    }
    non_negative(obj, "/revision", "revision", errs);
    if let Some(old) = old {
        immutable("data", obj.get("data"), old.get("data"), errs);
    }
}

/// `<kind>.<group>/<name>` of the controlling owner (`formatResourceName`), or `<none>`.
fn controller_cell(obj: &Value) -> String {
    arr(obj, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller") == Some(&json!(true)))
        .map(|r| {
            let group = str_of(r, "apiVersion")
                .unwrap_or_default()
                .rsplit_once('/')
                .map(|(g, _)| g.to_string())
                .unwrap_or_default();
            let kind = str_of(r, "kind").unwrap_or_default().to_lowercase();
            let kind = if group.is_empty() {
                kind
            } else {
                format!("{kind}.{group}")
            };
            format!("{kind}/{}", str_of(r, "name").unwrap_or_default())
        })
        .unwrap_or_else(|| "<none>".into())
}

fn controller_revision_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(obj),
        json!(controller_cell(obj)),
        json!(obj.get("revision").and_then(Value::as_i64).unwrap_or(0)),
        age(obj, now),
    ]
}

pub static CONTROLLER_REVISION: Hooks = Hooks {
    defaults: super::nothing,
    initial_status: super::nothing,
    validate: validate_controller_revision,
    columns: &[
        NAME,
        ("Controller", "string", "", 0, "Controller of the object"),
        (
            "Revision",
            "number",
            "",
            0,
            "Revision indicates the revision of the state represented by Data.",
        ),
        AGE,
    ],
    cells: controller_revision_cells,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_revisions_keep_their_data() {
        let rev = json!({"metadata": {"name": "agent-5d8f", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]},
            "data": {"spec": {"template": {"$patch": "replace"}}}, "revision": 2});
        let mut errs = Vec::new();
        validate_controller_revision(&rev, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(controller_cell(&rev), "daemonset.apps/agent");
        let mut changed = rev.clone();
        changed["data"] = json!({});
        changed["revision"] = json!(-1);
        validate_controller_revision(&changed, Some(&rev), &mut errs);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "revision: Invalid value: -1: must be greater than or equal to 0",
                "data: Invalid value: {}: field is immutable"
            ]
        );
    }

    #[test]
    fn a_stateful_set_update_may_change_only_some_fields() {
        let mut sts = json!({"metadata": {"name": "db"}, "spec": {"serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
        stateful_set_defaults(&mut sts);
        let mut errs = Vec::new();
        validate_stateful_set(&sts, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut scaled = sts.clone();
        scaled["spec"]["replicas"] = json!(3);
        validate_stateful_set(&scaled, Some(&sts), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut renamed = sts.clone();
        renamed["spec"]["serviceName"] = json!("other");
        validate_stateful_set(&renamed, Some(&sts), &mut errs);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("spec: Forbidden: updates to statefulset spec")
        );
    }
}
