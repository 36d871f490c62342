//! The node lifecycle controller's pure decisions: conditions of a silent node, the taints a
//! node's conditions call for, and when a pod on a `NoExecute`-tainted node is evicted.

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

/// The node's taints as the controller wants them: taints of others kept in place, the
/// condition taints (NoSchedule for each condition; NoExecute for not-ready/unreachable) and the
/// cordon taint added or removed, keeping `timeAdded` of those that stay.
pub fn wanted_taints(node: &Node, now: jiff::Timestamp) -> Vec<Taint> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut wanted: Vec<(String, &str)> = Vec::new();
    for (kind, status, key) in CONDITION_TAINTS {
        if condition(node, kind).is_some_and(|c| c.status == status) {
            wanted.push((key.to_string(), "NoSchedule"));
            if kind == "Ready" {
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
        let tainted = wanted_taints(&gone, now);
        let mut back = gone.clone();
        back.spec.as_mut().unwrap().taints = Some(tainted.clone());
        back.status.as_mut().unwrap().conditions =
            ready.status.as_ref().unwrap().conditions.clone();
        let untainted = wanted_taints(&back, now);
        let mut not_ready = node(Some("False"), json!([]));
        not_ready.spec.as_mut().unwrap().unschedulable = Some(true);
        let out = serde_json::to_string_pretty(&json!({
            "stopped posting": unknown,
            "never posted": never,
            "taints when unknown": tainted,
            "taints when ready again": untainted,
            "taints when not ready and cordoned": wanted_taints(&not_ready, now),
        }))
        .unwrap();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
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
