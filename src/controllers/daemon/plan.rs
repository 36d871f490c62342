//! The pure part of the DaemonSet controller: which nodes should run a daemon pod
//! (`NodeShouldRunDaemonPod`), the pods to create and delete on each (`podsShouldBeOnNode`,
//! then the rolling update), and the status counts (`updateDaemonSetStatus`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controllers::util;
use crate::scheduler::algorithm::{matches_node_selector_and_affinity, tolerates};

pub const REVISION_HASH: &str = "controller-revision-hash";
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

/// The tolerations every daemon pod gets (`AddOrUpdateDaemonPodTolerations`): node problems
/// never evict it, and cordoned or pressured nodes still run it.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let t = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        // `AddOrUpdateTolerationInPodSpec`: one of the same key and effect is replaced.
        match list
            .iter_mut()
            .find(|x| x.key == t.key && x.effect == t.effect)
        {
            Some(x) => *x = t,
            None => list.push(t),
        }
    }
}

/// The template daemon pods are made from: tolerations added, hash and generation labels.
pub fn pod_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let mut t = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    add_daemon_tolerations(t.spec.get_or_insert_with(Default::default));
    let labels = t
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default);
    if let Some(g) = ds.metadata.generation {
        labels.insert(TEMPLATE_GENERATION.into(), g.to_string());
    }
    labels.insert(REVISION_HASH.into(), hash.into());
    t
}

/// Pin a daemon pod to `node` (`ReplaceDaemonSetPodNodeNameNodeAffinity`): the required node
/// affinity becomes one term matching the node's name.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is on or is pinned to (`GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|r| {
            (r.key == "metadata.name" && r.operator == "In")
                .then(|| r.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

/// Whether a node should run the daemon pod, and whether a pod already there may stay
/// (`NodeShouldRunDaemonPod`): the template's node name, selector and affinity must match; an
/// untolerated NoSchedule taint keeps new pods off, an untolerated NoExecute taint evicts.
pub fn should_run(template: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.metadata.name.clone().unwrap_or_default();
    if template
        .node_name
        .as_ref()
        .is_some_and(|n| !n.is_empty() && *n != name)
    {
        return (false, false);
    }
    if !matches_node_selector_and_affinity(template, node) {
        return (false, false);
    }
    let tolerations = template.tolerations.clone().unwrap_or_default();
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut run = true;
    for taint in &taints {
        if tolerations.iter().any(|t| tolerates(t, taint)) {
            continue;
        }
        match taint.effect.as_str() {
            "NoExecute" => return (false, false),
            "NoSchedule" => run = false,
            _ => {}
        }
    }
    (run, true)
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn created(p: &Pod) -> Option<jiff::Timestamp> {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// `intstr.GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
pub fn scaled(v: Option<&IntOrString>, total: usize, default: usize) -> usize {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0) as usize,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
                Some(p) => ((p * total as f64) / 100.0).ceil().max(0.0) as usize,
                None => s.parse().unwrap_or(default),
            }
        }
    }
}

/// What one sync does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods (by name) to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
    /// Pods ready but not yet available for `minReadySeconds`: look again then.
    pub recheck_available: bool,
}

/// The sync of `ds` over `nodes` with its `pods` (every pod it controls), `hash` being the
/// current template's revision hash.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[&Node],
    pods: &[&Pod],
    hash: &str,
    now: jiff::Timestamp,
) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let template = pod_template(ds, hash).spec.unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|p| (created(p), name(p)));
    }
    let mut out = Plan::default();
    let available = |p: &Pod| util::is_available(p, min_ready, now);

    let mut desired = 0;
    let mut eligible: Vec<&str> = Vec::new();
    for node in nodes {
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        let (run, keep) = should_run(&template, node);
        let here = by_node.get(node_name).cloned().unwrap_or_default();
        if run {
            desired += 1;
            eligible.push(node_name);
        }
        if run && here.is_empty() {
            out.create.push(node_name.into());
        } else if keep {
            let mut live: Vec<&Pod> = Vec::new();
            for p in &here {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                // A failed daemon pod is deleted, to be made again.
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
                    out.delete.push(name(p));
                    continue;
                }
                live.push(p);
            }
            // One pod per node (per revision while a surge is going on); the oldest stays.
            let mut seen: Vec<Option<&str>> = Vec::new();
            for p in live {
                let key = if surge_allowed(ds) { hash_of(p) } else { None };
                if seen.contains(&key) {
                    out.delete.push(name(p));
                } else {
                    seen.push(key);
                }
            }
        } else {
            out.delete.extend(
                here.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| name(p)),
            );
        }
    }

    // The rolling update, once every eligible node has its pod.
    if rolling && out.create.is_empty() {
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        let max_surge = scaled(ru.max_surge.as_ref(), desired, 0);
        let mut max_unavailable = scaled(ru.max_unavailable.as_ref(), desired, 1);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let live = |n: &str| -> Vec<&Pod> {
            by_node
                .get(n)
                .into_iter()
                .flatten()
                .copied()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !out.delete.contains(&name(p))
                        && !util::is_terminated(p)
                })
                .collect()
        };
        let mut unavailable = eligible
            .iter()
            .filter(|n| !live(n).iter().any(|p| available(p)))
            .count();
        let mut surging = eligible
            .iter()
            .filter(|n| {
                let l = live(n);
                l.iter().any(|p| hash_of(p) == Some(hash))
                    && l.iter().any(|p| hash_of(p) != Some(hash))
            })
            .count();
        let mut deletes = Vec::new();
        let mut creates = Vec::new();
        for n in &eligible {
            let l = live(n);
            let old: Vec<&Pod> = l
                .iter()
                .copied()
                .filter(|p| hash_of(p) != Some(hash))
                .collect();
            if old.is_empty() {
                continue;
            }
            let new = l.iter().find(|p| hash_of(p) == Some(hash));
            if max_surge > 0 {
                match new {
                    Some(p) if available(p) => deletes.extend(old.iter().map(|p| name(p))),
                    Some(_) => {}
                    None if surging < max_surge => {
                        surging += 1;
                        creates.push(n.to_string());
                    }
                    None => {}
                }
            } else if new.is_none() {
                let all_unavailable = old.iter().all(|p| !available(p));
                if all_unavailable {
                    // Already down: replacing it costs nothing.
                    deletes.extend(old.iter().map(|p| name(p)));
                } else if unavailable < max_unavailable {
                    unavailable += 1;
                    deletes.extend(old.iter().map(|p| name(p)));
                }
            }
        }
        out.delete.extend(deletes);
        out.create.extend(creates);
    }

    // Status.
    let mut status = DaemonSetStatus {
        desired_number_scheduled: desired as i32,
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let (mut ready, mut avail, mut updated, mut current, mut mis) = (0, 0, 0, 0, 0);
    for node in nodes {
        let node_name = node.metadata.name.as_deref().unwrap_or_default();
        let Some(here) = by_node.get(node_name).filter(|h| !h.is_empty()) else {
            continue;
        };
        let (run, _) = should_run(&template, node);
        if !run {
            mis += 1;
            continue;
        }
        current += 1;
        let p = here[0];
        if util::is_ready(p) {
            ready += 1;
            if available(p) {
                avail += 1;
            } else {
                out.recheck_available = true;
            }
        }
        if hash_of(p) == Some(hash) {
            updated += 1;
        }
    }
    status.current_number_scheduled = current;
    status.number_misscheduled = mis;
    status.number_ready = ready;
    status.number_available = Some(avail);
    status.number_unavailable = Some(desired as i32 - avail).filter(|n| *n > 0);
    status.updated_number_scheduled = Some(updated);
    out.status = status;
    out
}

fn surge_allowed(ds: &DaemonSet) -> bool {
    let Some(strategy) = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()) else {
        return false;
    };
    strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate"
        && scaled(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_surge.as_ref()),
            1,
            0,
        ) > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn now() -> jiff::Timestamp {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    fn node(name: &str, extra: Value) -> Node {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn ds(extra: Value) -> DaemonSet {
        let mut v = json!({"metadata": {"name": "agent", "namespace": "default", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "pause"}]}}}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Pod {
        let mut v = json!({"metadata": {"name": name, "creationTimestamp": "2026-12-05T11:00:00Z",
                "labels": {"app": "agent", REVISION_HASH: hash}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running"}});
        if ready {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-12-05T11:00:00Z"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn summary(p: &Plan) -> String {
        let s = &p.status;
        format!(
            "create={:?} delete={:?} desired={} current={} misscheduled={} ready={} available={:?} updated={:?} unavailable={:?}",
            p.create,
            p.delete,
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_misscheduled,
            s.number_ready,
            s.number_available,
            s.updated_number_scheduled,
            s.number_unavailable
        )
    }

    #[test]
    fn eligibility_follows_selectors_and_taints() {
        let t = pod_template(&ds(json!({})), "h").spec.unwrap();
        assert_eq!(should_run(&t, &node("a", json!({}))), (true, true));
        let no_schedule = node(
            "b",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(should_run(&t, &no_schedule), (false, true));
        let no_execute = node(
            "c",
            json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoExecute"}]}}),
        );
        assert_eq!(should_run(&t, &no_execute), (false, false));
        // The default tolerations: cordoned and not-ready nodes keep their daemons.
        let cordoned = node(
            "d",
            json!({"spec": {"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}),
        );
        assert_eq!(should_run(&t, &cordoned), (true, true));
        let selective = pod_template(
            &ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}})),
            "h",
        )
        .spec
        .unwrap();
        assert_eq!(
            should_run(&selective, &node("a", json!({}))),
            (false, false)
        );
        assert_eq!(
            should_run(
                &selective,
                &node("e", json!({"metadata": {"labels": {"disk": "ssd"}}}))
            ),
            (true, true)
        );
        let tolerant = pod_template(
            &ds(json!({"spec": {"template": {"spec": {"tolerations": [
                {"key": "dedicated", "operator": "Exists"}]}}}})),
            "h",
        )
        .spec
        .unwrap();
        assert_eq!(should_run(&tolerant, &no_execute), (true, true));
        let mut pinned = pod("x", "", "h", false);
        pin_to_node(pinned.spec.as_mut().unwrap(), "c");
        assert_eq!(target_node(&pinned).as_deref(), Some("c"));
    }

    #[test]
    fn plans() {
        let nodes = [
            node("a", json!({})),
            node("b", json!({})),
            node(
                "c",
                json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoExecute"}]}}),
            ),
        ];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let d = ds(json!({}));
        let cases: Vec<(&str, DaemonSet, Vec<Pod>)> = vec![
            ("new", d.clone(), vec![]),
            (
                "a pod on the tainted node goes, a duplicate goes",
                d.clone(),
                vec![
                    pod("p1", "a", "h2", true),
                    pod("p2", "b", "h2", true),
                    pod("p3", "c", "h2", true),
                    pod("p4", "b", "h2", true),
                ],
            ),
            (
                "rolling update, one at a time",
                d.clone(),
                vec![pod("p1", "a", "h1", true), pod("p2", "b", "h1", true)],
            ),
            (
                "rolling update waits for the new pod",
                d.clone(),
                vec![pod("p1", "a", "h2", false), pod("p2", "b", "h1", true)],
            ),
            (
                "surge: a new pod beside the old",
                ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
                ),
                vec![pod("p1", "a", "h1", true), pod("p2", "b", "h1", true)],
            ),
            (
                "surge: the new pod is available, the old goes",
                ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
                ),
                vec![
                    pod("p1", "a", "h1", true),
                    pod("p3", "a", "h2", true),
                    pod("p2", "b", "h1", true),
                ],
            ),
            (
                "OnDelete keeps old pods",
                ds(
                    json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
                ),
                vec![pod("p1", "a", "h1", true), pod("p2", "b", "h1", true)],
            ),
        ];
        let mut out = String::new();
        for (what, d, pods) in &cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            out.push_str(&format!(
                "{what}:\n  {}\n",
                summary(&plan(d, &node_refs, &refs, "h2", now()))
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn scaled_values() {
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 3, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 3, 1), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 3, 1), 2);
        assert_eq!(scaled(None, 3, 1), 1);
    }
}
