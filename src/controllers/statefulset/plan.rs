//! The pure part of the StatefulSet controller (kube's `stateful_set_control.go`): the pods and
//! claims of each ordinal, which action a sync takes (OrderedReady: one at a time, each pod
//! Running and Ready before the next, scale-down from the highest ordinal; Parallel: all at
//! once), the rolling update from the highest ordinal down to the partition, and the status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::controllers::util;

pub const REVISION_HASH: &str = "controller-revision-hash";
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.starts_with('+') || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse::<i32>().ok().filter(|n| *n >= 0)
}

/// `<template>-<set>-<ordinal>`, the claim of one ordinal.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// One step of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod of this ordinal (its missing claims first).
    Create(i32),
    /// Delete this pod (to be made again, or because the set shrank).
    Delete(String),
    /// Create the missing claims of an existing pod's ordinal.
    Claims(i32),
}

/// What one sync does, and the status it leaves.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: StatefulSetStatus,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && util::is_ready(p)
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn revision(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// The claims of the set's templates an ordinal lacks.
pub fn missing_claims(set: &StatefulSet, ordinal: i32, existing: &[String]) -> Vec<String> {
    let name = set.metadata.name.clone().unwrap_or_default();
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
        .map(|t| {
            claim_name(
                t.metadata.name.as_deref().unwrap_or_default(),
                &name,
                ordinal,
            )
        })
        .filter(|c| !existing.contains(c))
        .collect()
}

/// The sync of `set` with its pods (every pod it controls), the names of the claims of its
/// namespace, and the revision of the current template (`update_revision`).
pub fn plan(
    set: &StatefulSet,
    pods: &[&Pod],
    claims: &[String],
    update_revision: &str,
    now: jiff::Timestamp,
) -> Plan {
    let spec = set.spec.clone().unwrap_or_default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let old_status = set.status.clone().unwrap_or_default();
    let current_revision = old_status
        .current_revision
        .clone()
        .unwrap_or_else(|| update_revision.to_string());

    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()) else {
            continue;
        };
        if ord < replicas {
            slots.insert(ord, p);
        } else {
            condemned.push((ord, p));
        }
    }
    condemned.sort_by_key(|(o, _)| *o);

    // Status from the pods as they are.
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: old_status.collision_count,
        update_revision: Some(update_revision.to_string()),
        current_revision: Some(current_revision.clone()),
        ..Default::default()
    };
    let (mut total, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in pods {
        if ordinal_of(&name, p.metadata.name.as_deref().unwrap_or_default()).is_none() {
            continue;
        }
        if !phase(p).is_empty() {
            total += 1;
        }
        if running_and_ready(p) {
            ready += 1;
            if util::is_available(p, min_ready, now) {
                available += 1;
            }
        }
        if !phase(p).is_empty() && !terminating(p) {
            if revision(p) == Some(current_revision.as_str()) {
                current += 1;
            }
            if revision(p) == Some(update_revision) {
                updated += 1;
            }
        }
    }
    status.replicas = total;
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(current);
    status.updated_replicas = Some(updated);
    // Every replica on the new revision and ready: it becomes the current one.
    if updated == replicas && ready >= replicas && condemned.is_empty() {
        status.current_revision = Some(update_revision.to_string());
        status.current_replicas = Some(updated);
    }

    let mut actions = Vec::new();
    let done = |actions: Vec<Action>, status: StatefulSetStatus| Plan { actions, status };

    // The replicas, lowest ordinal first.
    for ord in 0..replicas {
        match slots.get(&ord) {
            None => {
                actions.push(Action::Create(ord));
                if monotonic {
                    return done(actions, status);
                }
            }
            Some(p) if matches!(phase(p), "Failed" | "Succeeded") && !terminating(p) => {
                actions.push(Action::Delete(p.metadata.name.clone().unwrap_or_default()));
                if monotonic {
                    return done(actions, status);
                }
            }
            Some(p) => {
                if !missing_claims(set, ord, claims).is_empty() {
                    actions.push(Action::Claims(ord));
                }
                if monotonic && (terminating(p) || !running_and_ready(p)) {
                    return done(actions, status);
                }
            }
        }
    }

    // The condemned, highest ordinal first.
    for (_, p) in condemned.iter().rev() {
        if terminating(p) {
            if monotonic {
                return done(actions, status);
            }
            continue;
        }
        actions.push(Action::Delete(p.metadata.name.clone().unwrap_or_default()));
        if monotonic {
            return done(actions, status);
        }
    }
    if !actions.is_empty() && !monotonic {
        // Parallel: the rolling update waits for creations and deletions to settle.
        if actions.iter().any(|a| !matches!(a, Action::Claims(_))) {
            return done(actions, status);
        }
    }

    // The rolling update: highest ordinal first, down to the partition, one pod at a time.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);
        for ord in (partition..replicas).rev() {
            let Some(p) = slots.get(&ord) else { continue };
            if revision(p) != Some(update_revision) && !terminating(p) {
                actions.push(Action::Delete(p.metadata.name.clone().unwrap_or_default()));
                break;
            }
            // An unhealthy or terminating pod holds the update (`isHealthy`).
            if !running_and_ready(p) || terminating(p) {
                break;
            }
        }
    }
    done(actions, status)
}

/// The pod of `ordinal` (`newVersionedStatefulSetPod`): the template with the set's identity
/// labels, `hostname` and `subdomain`, and a volume per claim template.
pub fn pod_for(set: &StatefulSet, ordinal: i32, revision: &str, owner: OwnerReference) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let template: PodTemplateSpec = spec.template.clone();
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.clone().unwrap_or_default();
    labels.insert(REVISION_HASH.into(), revision.into());
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if let Some(svc) = spec.service_name.as_ref().filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc.clone());
    }
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        let volume = Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &set_name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != tname);
        volumes.push(volume);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tm.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The claims of `ordinal` from the templates (`getPersistentVolumeClaims`): the template's
/// labels plus the set's `matchLabels`; owned by the set when `whenDeleted: Delete`.
pub fn claims_for(
    set: &StatefulSet,
    ordinal: i32,
    set_owner: &OwnerReference,
) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let delete_with_set = claims_go_with_set(set);
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(match_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, &set_name, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| vec![set_owner.clone()]),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// Whether the claims go with the set (`whenDeleted: Delete`).
pub fn claims_go_with_set(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|r| r.when_deleted.as_deref())
        == Some("Delete")
}

/// Whether the claims of a condemned pod go with it (`whenScaled: Delete`).
pub fn claims_go_when_scaled(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .and_then(|r| r.when_scaled.as_deref())
        == Some("Delete")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn now() -> jiff::Timestamp {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    fn set(extra: Value) -> StatefulSet {
        let mut v = json!({"metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": 3, "serviceName": "web", "podManagementPolicy": "OrderedReady",
                "selector": {"matchLabels": {"app": "web"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    /// `state`: R (running and ready), P (pending), F (failed), T (terminating).
    fn pod(name: &str, state: char, rev: &str) -> Pod {
        let phase = match state {
            'R' | 'T' => "Running",
            'F' => "Failed",
            _ => "Pending",
        };
        let mut v = json!({"metadata": {"name": name, "labels": {"app": "web", REVISION_HASH: rev}},
            "spec": {"containers": []}, "status": {"phase": phase}});
        if state == 'R' || state == 'T' {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        }
        if state == 'T' {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-05T12:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    fn claims(n: i32) -> Vec<String> {
        (0..n).map(|i| claim_name("data", "web", i)).collect()
    }

    #[test]
    fn ordered_and_parallel_steps() {
        let parallel = json!({"spec": {"podManagementPolicy": "Parallel"}});
        let cases: Vec<(&str, StatefulSet, Vec<Pod>, i32)> = vec![
            ("new", set(json!({})), vec![], 0),
            (
                "web-0 pending: wait",
                set(json!({})),
                vec![pod("web-0", 'P', "web-2")],
                1,
            ),
            (
                "web-0 ready: web-1 next",
                set(json!({})),
                vec![pod("web-0", 'R', "web-2")],
                1,
            ),
            (
                "a failed pod is made again",
                set(json!({})),
                vec![pod("web-0", 'R', "web-2"), pod("web-1", 'F', "web-2")],
                2,
            ),
            (
                "a claim went missing",
                set(json!({})),
                vec![pod("web-0", 'R', "web-2")],
                0,
            ),
            (
                "scale down from the top, one at a time",
                set(json!({"spec": {"replicas": 1}})),
                vec![
                    pod("web-0", 'R', "web-2"),
                    pod("web-1", 'R', "web-2"),
                    pod("web-2", 'R', "web-2"),
                ],
                3,
            ),
            (
                "scale down waits for the terminating pod",
                set(json!({"spec": {"replicas": 1}})),
                vec![
                    pod("web-0", 'R', "web-2"),
                    pod("web-1", 'R', "web-2"),
                    pod("web-2", 'T', "web-2"),
                ],
                3,
            ),
            ("parallel: all at once", set(parallel.clone()), vec![], 0),
            (
                "parallel scale down",
                set(json!({"spec": {"podManagementPolicy": "Parallel", "replicas": 1}})),
                vec![
                    pod("web-0", 'R', "web-2"),
                    pod("web-1", 'P', "web-2"),
                    pod("web-2", 'R', "web-2"),
                ],
                3,
            ),
            (
                "rolling update from the top",
                set(json!({})),
                vec![
                    pod("web-0", 'R', "web-1"),
                    pod("web-1", 'R', "web-1"),
                    pod("web-2", 'R', "web-1"),
                ],
                3,
            ),
            (
                "rolling update continues below an updated, ready pod",
                set(json!({})),
                vec![
                    pod("web-0", 'R', "web-1"),
                    pod("web-1", 'R', "web-1"),
                    pod("web-2", 'R', "web-2"),
                ],
                3,
            ),
            (
                "parallel: the rolling update waits for the terminating pod",
                set(parallel.clone()),
                vec![
                    pod("web-0", 'R', "web-1"),
                    pod("web-1", 'R', "web-1"),
                    pod("web-2", 'T', "web-1"),
                ],
                3,
            ),
            (
                "partition 2 keeps web-0 and web-1",
                set(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}})),
                vec![
                    pod("web-0", 'R', "web-1"),
                    pod("web-1", 'R', "web-1"),
                    pod("web-2", 'R', "web-2"),
                ],
                3,
            ),
            (
                "OnDelete",
                set(
                    json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
                ),
                vec![
                    pod("web-0", 'R', "web-1"),
                    pod("web-1", 'R', "web-1"),
                    pod("web-2", 'R', "web-1"),
                ],
                3,
            ),
        ];
        let mut out = String::new();
        for (what, s, pods, n) in &cases {
            let refs: Vec<&Pod> = pods.iter().collect();
            let p = plan(s, &refs, &claims(*n), "web-2", now());
            out.push_str(&format!(
                "{what}:\n  actions={:?} replicas={} ready={:?} current={:?} updated={:?} revisions={:?}/{:?}\n",
                p.actions,
                p.status.replicas,
                p.status.ready_replicas,
                p.status.current_replicas,
                p.status.updated_replicas,
                p.status.current_revision,
                p.status.update_revision,
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn identities() {
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-012"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        let s = set(json!({"spec": {"persistentVolumeClaimRetentionPolicy": {
            "whenDeleted": "Delete", "whenScaled": "Retain"}}}));
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "web".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let p = pod_for(&s, 2, "web-abc", owner.clone());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["metadata"]["name"], "web-2");
        assert_eq!(v["metadata"]["labels"][POD_INDEX], "2");
        assert_eq!(v["spec"]["hostname"], "web-2");
        assert_eq!(v["spec"]["subdomain"], "web");
        assert_eq!(
            v["spec"]["volumes"][0],
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}})
        );
        let c = claims_for(&s, 2, &owner);
        assert_eq!(c[0].metadata.name.as_deref(), Some("data-web-2"));
        assert_eq!(c[0].metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(c[0].metadata.owner_references.as_ref().unwrap().len(), 1);
        assert!(!claims_go_when_scaled(&s));
        assert_eq!(missing_claims(&s, 1, &claims(1)), vec!["data-web-1"]);
    }
}
