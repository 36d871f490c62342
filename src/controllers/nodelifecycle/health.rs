//! The node lifecycle controller's pure decisions: conditions of a silent node, the taints a
//! node's conditions call for (the `NoExecute` one only when its zone's queue lets it), and when
//! a pod on a `NoExecute`-tainted node is evicted.

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::scheduler::algorithm::{
    TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE, tolerates,
};

/// The conditions the controller marks `Unknown` when the kubelet goes silent.
pub const WATCHED_CONDITIONS: [&str; 4] =
    ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Taints that follow node conditions, with the condition (type, status) that calls for them.
const CONDITION_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", TAINT_NOT_READY),
    ("Ready", "Unknown", TAINT_UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// The status of the node's Ready condition (`None` if the kubelet never posted one).
pub fn ready_status(node: &Node) -> Option<String> {
    condition(node, "Ready").map(|c| c.status.clone())
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// The conditions to write for a node whose kubelet stopped posting: every watched condition
/// `Unknown`, keeping the last heartbeat (`None` when nothing needs to change).
pub fn silent_conditions(node: &Node, now: jiff::Timestamp) -> Option<Vec<NodeCondition>> {
    let mut out = Vec::new();
    for kind in WATCHED_CONDITIONS {
        match condition(node, kind) {
            None => out.push(NodeCondition {
                type_: kind.into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(Time(now)),
            }),
            Some(c) if c.status != "Unknown" => out.push(NodeCondition {
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some("Kubelet stopped posting node status.".into()),
                last_transition_time: Some(Time(now)),
                ..c.clone()
            }),
            Some(_) => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

fn managed(key: &str) -> bool {
    key == TAINT_UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, _, k)| *k == key)
}

/// What a node's Ready condition calls for in `NoExecute` taints (kube's
/// `processTaintBaseEviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoExecute {
    /// None: the node is Ready (or the controller is in master disruption mode).
    Clear,
    /// This taint now: the node has it already, or has the opposite one (not-ready and
    /// unreachable are swapped at once, without waiting for a token).
    Now(&'static str),
    /// This taint, once the node's turn comes in its zone's rate-limited queue.
    Queue(&'static str),
}

/// The `NoExecute` condition taint for a Ready status: not-ready for False, unreachable for
/// Unknown, none for True or no condition.
pub fn no_execute_key(node: &Node) -> Option<&'static str> {
    match ready_status(node).as_deref() {
        Some("False") => Some(TAINT_NOT_READY),
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => None,
    }
}

/// Decide the node's `NoExecute` condition taint.
pub fn no_execute(node: &Node, master_disruption: bool) -> NoExecute {
    let Some(key) = no_execute_key(node) else {
        return NoExecute::Clear;
    };
    if master_disruption {
        return NoExecute::Clear;
    }
    let has = |k: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == k && t.effect == "NoExecute"))
    };
    if has(TAINT_NOT_READY) || has(TAINT_UNREACHABLE) {
        NoExecute::Now(key)
    } else {
        NoExecute::Queue(key)
    }
}

/// The node's taints as the controller wants them: taints of others kept in place, a NoSchedule
/// taint for each condition that calls for one, the cordon taint, and `no_execute` as the only
/// `NoExecute` condition taint; `timeAdded` is kept for those that stay.
pub fn wanted_taints(node: &Node, now: jiff::Timestamp, no_execute: Option<&str>) -> Vec<Taint> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut wanted: Vec<(String, &str)> = Vec::new();
    for (kind, status, key) in CONDITION_TAINTS {
        if condition(node, kind).is_some_and(|c| c.status == status) {
            wanted.push((key.to_string(), "NoSchedule"));
            if no_execute == Some(key) {
                wanted.push((key.to_string(), "NoExecute"));
            }
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push((TAINT_UNSCHEDULABLE.to_string(), "NoSchedule"));
    }
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(&t.key) || wanted.iter().any(|(k, e)| *k == t.key && *e == t.effect))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == key && t.effect == effect) {
            out.push(Taint {
                key,
                effect: effect.into(),
                time_added: (effect == "NoExecute").then_some(Time(now)),
                value: None,
            });
        }
    }
    out
}

/// When `pod` is to be evicted from its node, given the node's NoExecute taints: at once for an
/// untolerated taint, else when the shortest `tolerationSeconds` (capped by `eviction_timeout`)
/// has passed since the taint was added; never if every taint is tolerated forever.
pub fn eviction_time(
    pod: &Pod,
    taints: &[Taint],
    eviction_timeout: std::time::Duration,
) -> Option<jiff::Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let cap = jiff::SignedDuration::try_from(eviction_timeout).unwrap_or(jiff::SignedDuration::MAX);
    let mut earliest: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint
            .time_added
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let wait = if matching.is_empty() {
            Some(jiff::SignedDuration::ZERO)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            // Tolerated forever by at least one toleration.
            None
        } else {
            let secs = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0);
            Some(jiff::SignedDuration::from_secs(secs).min(cap))
        };
        if let Some(wait) = wait {
            let at = added + wait;
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    earliest
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn node(ready: Option<&str>, taints: serde_json::Value) -> Node {
        let conditions = match ready {
            Some(s) => json!([{"type": "Ready", "status": s, "reason": "KubeletReady",
                "lastHeartbeatTime": "2026-11-25T11:59:00Z", "lastTransitionTime": "2026-11-25T10:00:00Z"},
                {"type": "MemoryPressure", "status": "False"}]),
            None => json!([]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": "192.168.0.203"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn silent_node_transitions_and_taints() {
        let now: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let ready = node(
            Some("True"),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        );
        let unknown = silent_conditions(&ready, now).unwrap();
        let never = silent_conditions(&node(None, json!([])), now).unwrap();
        let mut gone = ready.clone();
        gone.status.as_mut().unwrap().conditions = Some(unknown.clone());
        assert_eq!(
            silent_conditions(&gone, now),
            None,
            "already Unknown: nothing to do"
        );
        let tainted = wanted_taints(&gone, now, Some(TAINT_UNREACHABLE));
        let mut back = gone.clone();
        back.spec.as_mut().unwrap().taints = Some(tainted.clone());
        back.status.as_mut().unwrap().conditions =
            ready.status.as_ref().unwrap().conditions.clone();
        let untainted = wanted_taints(&back, now, None);
        let mut not_ready = node(Some("False"), json!([]));
        not_ready.spec.as_mut().unwrap().unschedulable = Some(true);
        let out = serde_json::to_string_pretty(&json!({
            "stopped posting": unknown,
            "never posted": never,
            "taints when unknown": tainted,
            "taints when ready again": untainted,
            "taints when not ready and cordoned": wanted_taints(&not_ready, now, Some(TAINT_NOT_READY)),
        }))
        .unwrap();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn no_execute_taints_wait_for_their_turn_except_swaps() {
        let unreachable = json!([{"key": TAINT_UNREACHABLE, "effect": "NoExecute"}]);
        let not_ready = json!([{"key": TAINT_NOT_READY, "effect": "NoExecute"}]);
        let only_no_schedule = json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}]);
        // (Ready status, current taints, master disruption) → decision
        let table = [
            (Some("True"), unreachable.clone(), false, NoExecute::Clear),
            (None, json!([]), false, NoExecute::Clear),
            (
                Some("Unknown"),
                json!([]),
                false,
                NoExecute::Queue(TAINT_UNREACHABLE),
            ),
            (
                Some("Unknown"),
                only_no_schedule,
                false,
                NoExecute::Queue(TAINT_UNREACHABLE),
            ),
            (
                Some("False"),
                json!([]),
                false,
                NoExecute::Queue(TAINT_NOT_READY),
            ),
            (
                Some("Unknown"),
                unreachable.clone(),
                false,
                NoExecute::Now(TAINT_UNREACHABLE),
            ),
            // Swapped at once.
            (
                Some("False"),
                unreachable.clone(),
                false,
                NoExecute::Now(TAINT_NOT_READY),
            ),
            (
                Some("Unknown"),
                not_ready,
                false,
                NoExecute::Now(TAINT_UNREACHABLE),
            ),
            // Master disruption: no NoExecute taint at all.
            (Some("Unknown"), unreachable, true, NoExecute::Clear),
            (Some("False"), json!([]), true, NoExecute::Clear),
        ];
        for (ready, taints, disrupted, want) in table {
            let n = node(ready, taints.clone());
            assert_eq!(
                no_execute(&n, disrupted),
                want,
                "{ready:?} {taints} {disrupted}"
            );
        }
    }

    #[test]
    fn eviction_times() {
        let added: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let taints = vec![Taint {
            key: TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(added)),
            value: None,
        }];
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()
        };
        let default = pod(
            json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
        );
        let at = |s: i64| added + jiff::SignedDuration::from_secs(s);
        assert_eq!(
            eviction_time(&default, &taints, Duration::from_secs(5)),
            Some(at(5))
        );
        assert_eq!(
            eviction_time(&default, &taints, Duration::from_secs(600)),
            Some(at(300))
        );
        assert_eq!(
            eviction_time(&pod(json!([])), &taints, Duration::from_secs(5)),
            Some(at(0))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(
            eviction_time(&forever, &taints, Duration::from_secs(5)),
            None
        );
        assert_eq!(eviction_time(&default, &[], Duration::from_secs(5)), None);
    }
}
