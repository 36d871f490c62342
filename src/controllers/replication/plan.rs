//! The pure decisions of the replication controllers: which pods an owner claims, adopts or
//! releases, which surplus pods go first, how creations are batched, what the status says, and
//! the pod a template produces.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::controllers::util::{self, Selector};

/// What an owner does with one active pod of its namespace (`ControllerRefManager.ClaimPods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours and matching.
    Keep,
    /// An orphan that matches: take it (unless the owner is being deleted).
    Adopt,
    /// Ours but no longer matching: let it go.
    Release,
    /// Not ours.
    Ignore,
}

/// Decide the claim of `owner_uid` (being deleted: `owner_deleting`) on an object (a pod, or a
/// ReplicaSet for a Deployment).
pub fn claim(
    owner_uid: &str,
    owner_deleting: bool,
    selector: &Selector,
    obj: &ObjectMeta,
) -> Claim {
    let matches = selector.matches(obj.labels.as_ref());
    match util::controller_ref(obj) {
        Some(r) if r.uid == owner_uid => {
            if matches || owner_deleting {
                Claim::Keep
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None => {
            if matches && !owner_deleting && obj.deletion_timestamp.is_none() {
                Claim::Adopt
            } else {
                Claim::Ignore
            }
        }
    }
}

/// Batches of pod creations, "slow start" like the ReplicaSet controller: 1, 2, 4, ... so that a
/// failing template costs one error, not hundreds.
pub fn slow_start_batches(total: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut remaining, mut size) = (total, 1usize);
    while remaining > 0 {
        let batch = size.min(remaining);
        out.push(batch);
        remaining -= batch;
        size *= 2;
    }
    out
}

/// At most this many pods are created or deleted in one sync (kube's `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// `floor(log2(now - t))` in nanoseconds, -1 for times not in the past (kube's logarithmic
/// scale-down buckets: pods of similar age are treated as equal).
fn log_rank(t: jiff::Timestamp, now: jiff::Timestamp) -> i64 {
    let d = now.as_nanosecond() - t.as_nanosecond();
    if d > 0 { (d as f64).log2() as i64 } else { -1 }
}

/// Compare two timestamps where "first to delete" is the later/empty one (`afterOrZero`), using
/// logarithmic buckets and the uid as tie-break (`LogarithmicScaleDown`).
fn newer_first(
    a: Option<jiff::Timestamp>,
    b: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    uids: (&str, &str),
) -> Option<Ordering> {
    if a == b {
        return None;
    }
    match (a, b) {
        (None, _) => Some(Ordering::Less),
        (_, None) => Some(Ordering::Greater),
        (Some(a), Some(b)) => {
            let diff = log_rank(a, now) - log_rank(b, now);
            if diff == 0 {
                Some(uids.0.cmp(uids.1))
            } else {
                Some(diff.cmp(&0))
            }
        }
    }
}

/// Sort `pods` so that the ones to delete first come first (`ActivePodsWithRanks`):
/// unscheduled < scheduled; Pending < Unknown < Running; not ready < ready; lower
/// pod-deletion-cost; more pods of the same family on the node; ready more recently; more
/// restarts; created more recently. `related` are the pods whose co-location counts (the owner's
/// and its siblings' under one Deployment).
pub fn rank_for_deletion<'a>(
    mut pods: Vec<&'a Pod>,
    related: &[&Pod],
    now: jiff::Timestamp,
) -> Vec<&'a Pod> {
    let mut on_node: HashMap<String, usize> = HashMap::new();
    for p in related {
        if util::is_active(p) {
            *on_node.entry(node_of(p)).or_default() += 1;
        }
    }
    let rank = |p: &Pod| on_node.get(&node_of(p)).copied().unwrap_or(0);
    pods.sort_by(|a, b| {
        let (na, nb) = (node_of(a), node_of(b));
        if na != nb && (na.is_empty() || nb.is_empty()) {
            return if na.is_empty() {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let ord = phase_rank(a).cmp(&phase_rank(b));
        if ord != Ordering::Equal {
            return ord;
        }
        let (ra, rb) = (util::is_ready(a), util::is_ready(b));
        if ra != rb {
            return if !ra {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let ord = deletion_cost(a).cmp(&deletion_cost(b));
        if ord != Ordering::Equal {
            return ord;
        }
        let ord = rank(b).cmp(&rank(a));
        if ord != Ordering::Equal {
            return ord;
        }
        let uids = (uid(a), uid(b));
        if ra
            && rb
            && let Some(ord) = newer_first(util::ready_since(a), util::ready_since(b), now, uids)
        {
            return ord;
        }
        let ord = max_restarts(b).cmp(&max_restarts(a));
        if ord != Ordering::Equal {
            return ord;
        }
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        newer_first(created(a), created(b), now, uids).unwrap_or(Ordering::Equal)
    });
    pods
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn uid(p: &Pod) -> &str {
    p.metadata.uid.as_deref().unwrap_or_default()
}

/// The replica counts of an RC/RS status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub replicas: i32,
    pub fully_labeled_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
}

/// Count the owner's active pods (`calculateStatus`).
pub fn count(
    pods: &[&Pod],
    template_labels: Option<&BTreeMap<String, String>>,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> ReplicaCounts {
    let mut c = ReplicaCounts {
        replicas: pods.len() as i32,
        ..Default::default()
    };
    for p in pods {
        if util::fully_labeled(p.metadata.labels.as_ref(), template_labels) {
            c.fully_labeled_replicas += 1;
        }
        if util::is_ready(p) {
            c.ready_replicas += 1;
            if util::is_available(p, min_ready_seconds, now) {
                c.available_replicas += 1;
            }
        }
    }
    c
}

/// The status patch for counts and the observed generation; zero counts are left out as the
/// real API's `omitempty` does.
pub fn status_patch(c: ReplicaCounts, observed_generation: i64) -> serde_json::Value {
    let opt = |n: i32| {
        if n == 0 {
            serde_json::Value::Null
        } else {
            n.into()
        }
    };
    serde_json::json!({"status": {
        "replicas": c.replicas,
        "fullyLabeledReplicas": opt(c.fully_labeled_replicas),
        "readyReplicas": opt(c.ready_replicas),
        "availableReplicas": opt(c.available_replicas),
        "observedGeneration": observed_generation,
    }})
}

/// The controller reference an owner puts on what it creates.
pub fn controller_reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod `template` gives, named `name` (`GetPodFromTemplate`).
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    name: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            generate_name: Some(prefix.to_string()),
            namespace: Some(namespace.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The name prefix of an owner's pods: `<owner>-` (shortened so names stay valid).
pub fn pod_prefix(owner: &str) -> String {
    let mut prefix = format!("{owner}-");
    // 63-character DNS labels minus the 5-character suffix.
    if prefix.len() > 58 {
        prefix.truncate(58);
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<&str>, created: &str) -> Pod {
        let mut conditions = vec![];
        if let Some(t) = ready_at {
            conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": t}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created,
                         "labels": {"name": "nginx"}},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn deletion_order_follows_kube_ranking() {
        let now: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let old = "2026-11-25T08:00:00Z";
        let pods = [
            pod("running-ready-old", "n1", "Running", Some(old), old),
            pod("pending-unscheduled", "", "Pending", None, old),
            pod("pending-scheduled", "n2", "Pending", None, old),
            pod("running-not-ready", "n2", "Running", None, old),
            pod(
                "running-ready-recent",
                "n3",
                "Running",
                Some("2026-11-25T11:59:50Z"),
                old,
            ),
            // Ready a second later: the same logarithmic bucket as "old", so the uid decides.
            pod(
                "running-ready-doubled",
                "n1",
                "Running",
                Some("2026-11-25T08:00:01Z"),
                old,
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let order: Vec<&str> = rank_for_deletion(refs.clone(), &refs, now)
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "pending-unscheduled",
                "pending-scheduled",
                "running-not-ready",
                // Two ready pods share n1: one of them goes before the lone pod on n3 ...
                "running-ready-doubled",
                "running-ready-old",
                // ... even though n3's pod became ready more recently.
                "running-ready-recent",
            ]
        );
    }

    #[test]
    fn claims_batches_counts() {
        let sel = Selector::from_map(Some(&BTreeMap::from([(
            "name".to_string(),
            "nginx".to_string(),
        )])));
        let mut p = pod("a", "n1", "Running", None, "2026-11-25T08:00:00Z");
        assert_eq!(claim("rc", false, &sel, &p.metadata), Claim::Adopt);
        assert_eq!(claim("rc", true, &sel, &p.metadata), Claim::Ignore);
        p.metadata.owner_references = Some(vec![controller_reference(
            "v1",
            "ReplicationController",
            &ObjectMeta {
                name: Some("x".into()),
                uid: Some("rc".into()),
                ..Default::default()
            },
        )]);
        assert_eq!(claim("rc", false, &sel, &p.metadata), Claim::Keep);
        assert_eq!(claim("other", false, &sel, &p.metadata), Claim::Ignore);
        p.metadata.labels = Some(BTreeMap::from([("name".into(), "web".into())]));
        assert_eq!(claim("rc", false, &sel, &p.metadata), Claim::Release);

        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);

        let now: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let a = pod(
            "a",
            "n1",
            "Running",
            Some("2026-11-25T11:59:58Z"),
            "2026-11-25T08:00:00Z",
        );
        let b = pod(
            "b",
            "n1",
            "Running",
            Some("2026-11-25T11:00:00Z"),
            "2026-11-25T08:00:00Z",
        );
        let c = pod("c", "", "Pending", None, "2026-11-25T08:00:00Z");
        let labels = BTreeMap::from([("name".to_string(), "nginx".to_string())]);
        assert_eq!(
            count(&[&a, &b, &c], Some(&labels), 10, now),
            ReplicaCounts {
                replicas: 3,
                fully_labeled_replicas: 3,
                ready_replicas: 2,
                available_replicas: 1
            }
        );
        assert_eq!(pod_prefix("nginx-controller"), "nginx-controller-");
    }
}
