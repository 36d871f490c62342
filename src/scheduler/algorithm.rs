//! The scheduling decision, pure: which nodes can take a pod (kube-scheduler's filters that
//! matter in a lab: readiness and taints, `spec.unschedulable`, `nodeSelector`, pod capacity)
//! and which of them is best (spread the replicas of one owner, then the pods overall), plus
//! the FailedScheduling message in kube-scheduler's words.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, Pod, PodSpec, Taint, Toleration,
};

/// Why a node cannot take a pod, as kube-scheduler words it (after "N node(s) ...").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    Unschedulable,
    Selector,
    Taint(String, String),
    TooManyPods,
    VolumeNodeAffinity,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Unschedulable => f.write_str("node(s) were unschedulable"),
            Unfit::Selector => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Unfit::Taint(key, value) => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Unfit::TooManyPods => f.write_str("Too many pods"),
            Unfit::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
        }
    }
}

/// Taints the node lifecycle controller puts on nodes (and the scheduler respects).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Whether one toleration matches `taint` (key, operator, value and effect).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match t.operator.as_deref() {
        Some("Exists") => true,
        _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok && value_ok
}

fn tolerated_by(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Whether `node` (running `pods_on_node` pods) can take `pod`.
pub fn fits(pod: &Pod, node: &Node, pods_on_node: usize) -> Result<(), Unfit> {
    let spec = pod.spec.as_ref();
    let node_spec = node.spec.as_ref();
    if node_spec.and_then(|s| s.unschedulable) == Some(true) {
        let tolerated = spec.and_then(|s| s.tolerations.as_ref()).is_some_and(|ts| {
            tolerated_by(
                ts,
                &Taint {
                    key: TAINT_UNSCHEDULABLE.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
            )
        });
        if !tolerated {
            return Err(Unfit::Unschedulable);
        }
    }
    let tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut taints: Vec<Taint> = node_spec.and_then(|s| s.taints.clone()).unwrap_or_default();
    // A node that is not Ready but not tainted yet (the lifecycle controller has not caught up)
    // is treated as tainted not-ready, which is what it will be.
    if !ready(node)
        && !taints
            .iter()
            .any(|t| t.key.starts_with("node.kubernetes.io/"))
    {
        taints.push(Taint {
            key: TAINT_NOT_READY.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    for taint in taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    {
        if !tolerated_by(&tolerations, taint) {
            return Err(Unfit::Taint(
                taint.key.clone(),
                taint.value.clone().unwrap_or_default(),
            ));
        }
    }
    if let Some(spec) = spec
        && !matches_node_selector_and_affinity(spec, node)
    {
        return Err(Unfit::Selector);
    }
    let capacity = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("pods"))
        .and_then(|q| q.0.parse::<usize>().ok())
        .unwrap_or(110);
    if pods_on_node >= capacity {
        return Err(Unfit::TooManyPods);
    }
    Ok(())
}

/// Whether one node selector requirement holds for a value (`None`: the key is absent).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (
            value.and_then(number),
            values.first().and_then(|x| number(x)),
        ) {
            (Some(v), Some(bound)) if r.operator == "Gt" => v > bound,
            (Some(v), Some(bound)) => v < bound,
            _ => false,
        },
        _ => false,
    }
}

/// The pod's `nodeSelector` and required node affinity both hold on `node`
/// (`NodeAffinity` filter: the terms are ORed, the requirements of a term ANDed; `matchFields`
/// knows `metadata.name`).
pub fn matches_node_selector_and_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = &spec.node_selector
        && selector.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(required) => node_selector_matches(required, node),
        None => true,
    }
}

/// Whether the pod's bound volumes may be used on `node` (`VolumeBinding`'s check of each
/// PersistentVolume's `nodeAffinity`); `volumes` are the required node selectors of the
/// volumes bound to the pod's claims.
pub fn fits_volumes(volumes: &[&NodeSelector], node: &Node) -> Result<(), Unfit> {
    if volumes.iter().all(|sel| node_selector_matches(sel, node)) {
        Ok(())
    } else {
        Err(Unfit::VolumeNodeAffinity)
    }
}

/// A node selector (its terms ORed, each term's requirements ANDed) on a node.
fn node_selector_matches(required: &NodeSelector, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref();
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        // A term without requirements matches nothing.
        (!exprs.is_empty() || !fields.is_empty())
            && exprs
                .iter()
                .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
            && fields
                .iter()
                .all(|r| r.key == "metadata.name" && requirement_holds(r, name))
    })
}

/// kube-scheduler's message when no node fits: the reasons counted and sorted.
pub fn failed_message(total: usize, unfit: &[Unfit]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for u in unfit {
        *counts.entry(u.to_string()).or_default() += 1;
    }
    let mut reasons: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    reasons.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        reasons.join(", ")
    )
}

/// Among fitting nodes (name, pods of the pod's owner there, all pods there), the best:
/// fewest of the owner's pods, then fewest pods; `tie` picks among equals.
pub fn pick<'a>(
    candidates: &[(&'a str, usize, usize)],
    tie: impl FnOnce(usize) -> usize,
) -> Option<&'a str> {
    let best = candidates.iter().map(|(_, own, all)| (*own, *all)).min()?;
    let equal: Vec<&str> = candidates
        .iter()
        .filter(|(_, own, all)| (*own, *all) == best)
        .map(|(n, _, _)| *n)
        .collect();
    Some(equal[tie(equal.len()) % equal.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"pods": "110"}}
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn filters_and_message() {
        let p = pod(serde_json::json!({"spec": {"nodeSelector": {"disk": "ssd"}}}));
        let ssd = node(
            "a",
            serde_json::json!({"metadata": {"labels": {"disk": "ssd"}}}),
        );
        assert_eq!(fits(&p, &ssd, 0), Ok(()));
        assert_eq!(
            fits(&p, &node("b", serde_json::json!({})), 0),
            Err(Unfit::Selector)
        );
        let unreachable = node(
            "c",
            serde_json::json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
        );
        let err = fits(&p, &unreachable, 0).unwrap_err();
        assert_eq!(
            err,
            Unfit::Taint("node.kubernetes.io/unreachable".into(), String::new())
        );
        let cordoned = node("d", serde_json::json!({"spec": {"unschedulable": true}}));
        assert_eq!(fits(&p, &cordoned, 0), Err(Unfit::Unschedulable));
        assert_eq!(
            fits(&pod(serde_json::json!({})), &ssd, 110),
            Err(Unfit::TooManyPods)
        );
        assert_eq!(
            failed_message(3, &[Unfit::Selector, err, Unfit::Selector]),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn required_node_affinity() {
        let a = node(
            "a",
            serde_json::json!({"metadata": {"labels": {"zone": "z1", "cores": "8"}}}),
        );
        let b = node("b", serde_json::json!({}));
        let with = |affinity: serde_json::Value| {
            pod(serde_json::json!({"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": affinity}}}}}))
        };
        // A DaemonSet pod's term.
        let daemon = with(serde_json::json!([{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["b"]}]}]));
        assert_eq!(fits(&daemon, &a, 0), Err(Unfit::Selector));
        assert_eq!(fits(&daemon, &b, 0), Ok(()));
        let zoned = with(serde_json::json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]},
                                  {"key": "cores", "operator": "Gt", "values": ["4"]}]},
            {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}],
             "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["b"]}]}]));
        assert_eq!(fits(&zoned, &a, 0), Ok(()));
        assert_eq!(fits(&zoned, &b, 0), Err(Unfit::Selector));
        assert_eq!(
            fits(&with(serde_json::json!([{}])), &a, 0),
            Err(Unfit::Selector)
        );
        // A local volume pinned to a's hostname.
        let pinned: NodeSelector = serde_json::from_value(serde_json::json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}))
        .unwrap();
        assert_eq!(fits_volumes(&[&pinned], &a), Ok(()));
        assert_eq!(fits_volumes(&[&pinned], &b), Err(Unfit::VolumeNodeAffinity));
        assert_eq!(fits_volumes(&[], &b), Ok(()));
    }

    #[test]
    fn spreads_an_owner_before_balancing() {
        let candidates = [("a", 1, 1), ("b", 0, 5), ("c", 0, 2)];
        assert_eq!(pick(&candidates, |_| 0), Some("c"));
        let equal = [("a", 0, 0), ("b", 0, 0)];
        assert_eq!(pick(&equal, |n| n - 1), Some("b"));
        assert_eq!(pick(&[], |_| 0), None);
    }
}
