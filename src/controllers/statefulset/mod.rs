//! The StatefulSet controller (kube's `pkg/controller/statefulset`): pods `<set>-0`, `<set>-1`,
//! ... with stable names, `hostname`/`subdomain` for the governing Service, and a claim
//! `<template>-<set>-<ordinal>` per volume claim template, made before the pod; OrderedReady or
//! Parallel pod management; rolling updates down to the partition, or OnDelete; the claim
//! retention policy (`whenDeleted: Delete` makes the set own the claims, `whenScaled: Delete`
//! gives a condemned pod's claims to the pod, so the garbage collector removes them after it).
//! The pure decisions are in [`plan`].
//!
//! Revisions are ControllerRevisions `<set>-<hash of the template>` ([`super::history`]; the
//! hash is kube's `ComputeHash` of the template, where kube hashes the revision's data), named
//! by the pods' `controller-revision-hash` label and the status; a pod below the partition that
//! is made again gets the current revision's template.

pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use super::Shared;
use super::deployment::hash::compute_hash;
use super::informer::{Change, Key};
use super::job::delete_pod;
use super::queue::{WorkQueue, run_worker};
use super::replication::plan::controller_reference;
use super::util;
use crate::events::{Recorder, reference};
use plan::Action;

const COMPONENT: &str = "statefulset-controller";

fn owning_set(p: &Pod) -> Option<Key> {
    util::controller_ref(&p.metadata)
        .filter(|r| r.kind == "StatefulSet" && r.api_version == "apps/v1")
        .map(|r| Key::new(p.namespace().unwrap_or_default(), r.name.clone()))
}

/// Register the handlers now; the future syncs StatefulSets forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let queue = queue.clone();
        shared.statefulsets.on_change(move |change| {
            if let Change::Applied { new, .. } = change {
                queue.add(Key::of(*new));
            }
        });
    }
    {
        let queue = queue.clone();
        shared.pods.on_change(move |change| {
            let pod = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(p) => *p,
            };
            if let Some(set) = owning_set(pod) {
                queue.add(set);
            }
        });
    }
    {
        // A claim that goes away is made again for its ordinal.
        let queue = queue.clone();
        let sets = shared.statefulsets.clone();
        shared.pvcs.on_change(move |change| {
            if let Change::Deleted(c) = change {
                let ns = c.namespace().unwrap_or_default();
                let name = c.name_any();
                for s in sets.list_namespace(&ns) {
                    if name.contains(&format!("-{}-", s.name_any())) {
                        queue.add(Key::of(s.as_ref()));
                    }
                }
            }
        });
    }
    async move {
        shared.synced().await;
        let recorder = Recorder::new(shared.client.clone(), COMPONENT, None);
        run_worker(COMPONENT, queue, move |key| {
            let (s, r) = (shared.clone(), recorder.clone());
            async move { sync(&s, &r, &key).await }
        })
        .await;
    }
}

async fn sync(shared: &Shared, recorder: &Recorder, key: &Key) -> anyhow::Result<Option<Duration>> {
    let Some(set) = shared.statefulsets.get(key) else {
        return Ok(None);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let revision = format!("{}-{}", key.name, compute_hash(&template, collision));
    let pods: Vec<Arc<Pod>> = shared
        .pods
        .list_namespace(&key.namespace)
        .into_iter()
        .filter(|p| util::controller_uid(&p.metadata).as_deref() == Some(uid.as_str()))
        .collect();
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let claims: Vec<String> = shared
        .pvcs
        .list_namespace(&key.namespace)
        .iter()
        .map(|c| c.name_any())
        .collect();
    let owner = controller_reference("apps/v1", "StatefulSet", set.meta());
    let spec = set.spec.clone().unwrap_or_default();
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(
        plan::REVISION_HASH.into(),
        revision
            .trim_start_matches(&format!("{}-", key.name))
            .to_string(),
    );
    let in_use: Vec<String> = refs
        .iter()
        .filter_map(|p| {
            p.metadata
                .labels
                .as_ref()?
                .get(plan::REVISION_HASH)
                .cloned()
        })
        .chain(set.status.as_ref().and_then(|s| s.current_revision.clone()))
        .collect();
    super::history::sync(
        shared,
        &owner,
        &key.namespace,
        &revision,
        &template,
        labels,
        spec.revision_history_limit.unwrap_or(10),
        &in_use,
    )
    .await?;
    // Pods below the partition are made from the current revision while an update waits.
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| *c != revision)
        .and_then(|c| {
            let rev = shared
                .revisions
                .get(&Key::new(key.namespace.clone(), c.clone()))?;
            let mut old = (*set).clone();
            old.spec.as_mut()?.template = super::history::template_of(&rev)?;
            Some((c, old))
        });
    let partition = spec
        .update_strategy
        .as_ref()
        .filter(|u| u.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
        .map(|u| {
            u.rolling_update
                .as_ref()
                .and_then(|r| r.partition)
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let plan = plan::plan(&set, &refs, &claims, &revision, now);

    let set_ref = reference(set.as_ref());
    let pods_api: Api<Pod> = Api::namespaced(shared.client.clone(), &key.namespace);
    let claims_api: Api<PersistentVolumeClaim> =
        Api::namespaced(shared.client.clone(), &key.namespace);
    let mut failure: Option<anyhow::Error> = None;
    for action in &plan.actions {
        let result = match action {
            Action::Claims(ord) => {
                create_claims(&claims_api, &set, *ord, &owner, &claims, recorder).await
            }
            Action::Create(ord) => {
                match create_claims(&claims_api, &set, *ord, &owner, &claims, recorder).await {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let pod = match &current {
                            Some((name, old)) if *ord < partition => {
                                plan::pod_for(old, *ord, name, owner.clone())
                            }
                            _ => plan::pod_for(&set, *ord, &revision, owner.clone()),
                        };
                        let name = pod.name_any();
                        match pods_api.create(&PostParams::default(), &pod).await {
                            Ok(created) => {
                                shared.pods.observe(created);
                                recorder.normal(
                                    &set_ref,
                                    "SuccessfulCreate",
                                    format!(
                                        "create Pod {name} in StatefulSet {} successful",
                                        key.name
                                    ),
                                );
                                Ok(())
                            }
                            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                            Err(e) => {
                                recorder.warning(
                                    &set_ref,
                                    "FailedCreate",
                                    format!(
                                        "create Pod {name} in StatefulSet {} failed error: {e}",
                                        key.name
                                    ),
                                );
                                Err(e.into())
                            }
                        }
                    }
                }
            }
            Action::Delete(name) => {
                let Some(pod) = refs.iter().find(|p| p.name_any() == *name) else {
                    continue;
                };
                let condemned = plan::ordinal_of(&key.name, name)
                    .is_some_and(|o| o >= set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
                if condemned && plan::claims_go_when_scaled(&set) {
                    give_claims_to_pod(&claims_api, &set, pod, &owner).await?;
                }
                match delete_pod(&pods_api, pod).await {
                    Ok(_) => {
                        recorder.normal(
                            &set_ref,
                            "SuccessfulDelete",
                            format!("delete Pod {name} in StatefulSet {} successful", key.name),
                        );
                        Ok(())
                    }
                    Err(e) => {
                        recorder.warning(
                            &set_ref,
                            "FailedDelete",
                            format!(
                                "delete Pod {name} in StatefulSet {} failed error: {e}",
                                key.name
                            ),
                        );
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = result {
            failure.get_or_insert(e);
            break;
        }
    }

    if failure.is_none()
        && let Err(e) = reconcile_claim_owners(shared, &claims_api, &set, &owner).await
    {
        failure = Some(e);
    }

    if set.status.as_ref() != Some(&plan.status) {
        let api: Api<StatefulSet> = Api::namespaced(shared.client.clone(), &key.namespace);
        let patch = serde_json::json!({ "status": plan.status });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => shared.statefulsets.observe(updated),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => anyhow::bail!("update status of statefulset {key}: {e}"),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let waiting =
        plan.status.ready_replicas.unwrap_or(0) > plan.status.available_replicas.unwrap_or(0);
    Ok((min_ready > 0 && waiting).then(|| Duration::from_secs(min_ready as u64)))
}

/// Keep the claims of the set's replicas owned by the set exactly when `whenDeleted: Delete`
/// (the policy may change after they were made), as kube's `updateClaimOwnerRefForSetAndPod`.
async fn reconcile_claim_owners(
    shared: &Shared,
    api: &Api<PersistentVolumeClaim>,
    set: &StatefulSet,
    owner: &OwnerReference,
) -> anyhow::Result<()> {
    let want = plan::claims_go_with_set(set);
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ns = set.namespace().unwrap_or_default();
    for ord in 0..replicas {
        for claim in plan::claims_for(set, ord, owner) {
            let name = claim.name_any();
            let Some(current) = shared.pvcs.get(&Key::new(ns.clone(), name.clone())) else {
                continue;
            };
            let refs = current
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let has = refs.iter().any(|r| r.uid == owner.uid);
            if has == want {
                continue;
            }
            let mut next: Vec<OwnerReference> =
                refs.into_iter().filter(|r| r.uid != owner.uid).collect();
            if want {
                next.push(owner.clone());
            }
            let patch = serde_json::json!({"metadata": {"ownerReferences": next,
                "resourceVersion": current.metadata.resource_version}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => shared.pvcs.observe(updated),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => anyhow::bail!("owner of claim {name}: {e}"),
            }
        }
    }
    Ok(())
}

/// Create the claims of `ordinal` that do not exist yet.
async fn create_claims(
    api: &Api<PersistentVolumeClaim>,
    set: &StatefulSet,
    ordinal: i32,
    owner: &OwnerReference,
    existing: &[String],
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let set_name = set.name_any();
    let pod = format!("{set_name}-{ordinal}");
    for claim in plan::claims_for(set, ordinal, owner) {
        let name = claim.name_any();
        if existing.contains(&name) {
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => recorder.normal(
                &reference(set),
                "SuccessfulCreate",
                format!("create Claim {name} Pod {pod} in StatefulSet {set_name} success"),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                recorder.warning(
                    &reference(set),
                    "FailedCreate",
                    format!(
                        "create Claim {name} for Pod {pod} in StatefulSet {set_name} failed error: {e}"
                    ),
                );
                anyhow::bail!("create claim {name}: {e}");
            }
        }
    }
    Ok(())
}

/// `whenScaled: Delete`: the condemned pod owns its claims, so they go after it.
async fn give_claims_to_pod(
    api: &Api<PersistentVolumeClaim>,
    set: &StatefulSet,
    pod: &Pod,
    set_owner: &OwnerReference,
) -> anyhow::Result<()> {
    let set_name = set.name_any();
    let Some(ord) = plan::ordinal_of(&set_name, &pod.name_any()) else {
        return Ok(());
    };
    let pod_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    };
    for t in set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .into_iter()
        .flatten()
    {
        let name = plan::claim_name(
            t.metadata.name.as_deref().unwrap_or_default(),
            &set_name,
            ord,
        );
        // The merge patch replaces the list: the set stays an owner if it owns them anyway.
        let mut owners = vec![pod_ref.clone()];
        if plan::claims_go_with_set(set) {
            owners.push(set_owner.clone());
        }
        let patch = serde_json::json!({"metadata": {"ownerReferences": owners}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => anyhow::bail!("give claim {name} to pod {}: {e}", pod.name_any()),
        }
    }
    Ok(())
}
