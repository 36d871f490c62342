//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets named
//! `<deployment>-<pod-template-hash>` ([`hash`]), as kube's `DeploymentController`.
//!
//! - The ReplicaSets a Deployment selects are claimed like pods (adopt / release). The new one is
//!   the ReplicaSet whose template equals the Deployment's (ignoring the hash label); it carries
//!   `pod-template-hash` in its labels, selector and template, and the annotations
//!   `deployment.kubernetes.io/revision` (one more than any old one), `desired-replicas` and
//!   `max-replicas`. The Deployment gets the revision annotation too.
//! - `RollingUpdate` ([`rollout`]): grow the new ReplicaSet into the surge room, then shrink old
//!   ones (unavailable pods first) as long as `replicas - maxUnavailable` pods stay available;
//!   each step waits for the ReplicaSets' status (their pods' readiness), so a rollout advances
//!   as pods become available. `Recreate`: scale every old ReplicaSet to 0, wait until their pods
//!   are gone, then scale the new one up.
//! - A resize in the middle of a rollout is spread over the active ReplicaSets in proportion.
//! - Completed rollouts delete old ReplicaSets beyond `revisionHistoryLimit`.
//! - Status: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration`, conditions `Available` and `Progressing`;
//!   events `ScalingReplicaSet` ("Scaled up replica set web-5869d7778c from 0 to 2").
//!
//! Not done: `progressDeadlineSeconds` (no `ProgressDeadlineExceeded`), pausing beyond "no
//! rollout while paused", rollback annotations.

pub mod hash;
pub mod rollout;
pub mod spew;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::replication::plan::{self as rcplan, Claim};
use super::util::{self, Selector};
use crate::events::{Recorder, reference};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

/// Deployment annotations not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

fn view(rs: &ReplicaSet) -> rollout::Rs {
    let status = rs.status.clone().unwrap_or_default();
    rollout::Rs {
        name: rs.name_any(),
        created: created(&rs.metadata),
        replicas: rs_replicas(rs),
        status_replicas: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        max_replicas: annotation(&rs.metadata, MAX_REPLICAS).and_then(|v| v.parse().ok()),
    }
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
}

/// (maxSurge, maxUnavailable); both 0 for `Recreate`.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into());
    rollout::fenceposts(
        Some(ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&default)),
        Some(
            ru.and_then(|r| r.max_unavailable.as_ref())
                .unwrap_or(&default),
        ),
        replicas(d),
    )
}

/// The template without the hash label, for comparing a ReplicaSet with its Deployment.
fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t.metadata.as_mut().expect("labels were there").labels = None;
        }
    }
    serde_json::to_value(t).unwrap_or_default()
}

fn template_of(rs: &ReplicaSet) -> PodTemplateSpec {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default()
}

fn deployment_template(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// Register the handlers now; the future rolls Deployments out forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let q = queue.clone();
        shared.deployments.on_change(move |change| {
            if let Change::Applied { new, .. } = change {
                q.add(Key::of(*new));
            }
        });
    }
    {
        let q = queue.clone();
        let deployments = shared.deployments.clone();
        shared.rss.on_change(move |change| {
            let rs = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(rs) => *rs,
            };
            let ns = rs.namespace().unwrap_or_default();
            match util::controller_ref(&rs.metadata) {
                Some(r) if r.kind == "Deployment" => q.add(Key::new(ns, r.name.clone())),
                Some(_) => {}
                None => {
                    for d in deployments.list_namespace(&ns) {
                        let sel = d
                            .spec
                            .as_ref()
                            .map(|s| Selector::from_label_selector(&s.selector));
                        if sel.is_some_and(|s| s.matches(rs.metadata.labels.as_ref())) {
                            q.add(Key::of(d.as_ref()));
                        }
                    }
                }
            }
        });
    }
    {
        // Recreate waits for the old pods to be gone.
        let q = queue.clone();
        let rss = shared.rss.clone();
        shared.pods.on_change(move |change| {
            if let Change::Deleted(pod) = change
                && let Some(r) = util::controller_ref(&pod.metadata)
                && r.kind == "ReplicaSet"
            {
                let ns = pod.namespace().unwrap_or_default();
                if let Some(rs) = rss.get(&Key::new(ns.clone(), r.name.clone()))
                    && let Some(d) = util::controller_ref(&rs.metadata)
                {
                    q.add(Key::new(ns, d.name.clone()));
                }
            }
        });
    }
    async move {
        shared.synced().await;
        let c = Arc::new(Controller {
            recorder: Recorder::new(shared.client.clone(), "deployment-controller", None),
            shared,
        });
        run_worker("deployment-controller", queue, move |key| {
            let c = c.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

struct Controller {
    shared: Arc<Shared>,
    recorder: Recorder,
}

/// One sync's view of a Deployment's ReplicaSets.
struct Family {
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
    /// The new ReplicaSet was created in this sync.
    created: bool,
}

impl Family {
    fn all(&self) -> Vec<&ReplicaSet> {
        self.old.iter().chain(self.new.iter()).collect()
    }
    fn views(&self) -> Vec<rollout::Rs> {
        self.all().into_iter().map(view).collect()
    }
}

impl Controller {
    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(d) = self.shared.deployments.get(key) else {
            return Ok(None);
        };
        let d = d.as_ref().clone();
        let Some(spec) = d.spec.as_ref() else {
            return Ok(None);
        };
        let selector = &spec.selector;
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|m| m.is_empty())
        {
            self.recorder.warning(
                &reference(&d),
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            return Ok(None);
        }
        let rss = self.claim(&d).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let family = self.family(&d, rss, false).await?;
            self.sync_status(&d, &family).await?;
            return Ok(None);
        }
        let paused = spec.paused == Some(true);
        if paused || self.scaling_event(&d, &rss) {
            let family = self.family(&d, rss, false).await?;
            self.scale(&d, &family).await?;
            let family = self.refresh(family);
            if !paused && self.complete(&d, &family) {
                self.cleanup(&d, &family).await?;
            }
            self.sync_status(&d, &family).await?;
            return Ok(None);
        }
        if is_rolling(&d) {
            self.rolling(&d, rss).await
        } else {
            self.recreate(&d, rss).await
        }
    }

    /// Adopt and release ReplicaSets; the ones this Deployment controls.
    async fn claim(&self, d: &Deployment) -> anyhow::Result<Vec<ReplicaSet>> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let deleting = d.metadata.deletion_timestamp.is_some();
        let selector = Selector::from_label_selector(&d.spec.as_ref().expect("checked").selector);
        let api: Api<ReplicaSet> = Api::namespaced(self.shared.client.clone(), &ns);
        let mut mine = Vec::new();
        // Re-read once before the first adoption, as kube's RecheckDeletionTimestamp does: with
        // `--cascade=orphan` the garbage collector strips the ReplicaSets' references while this
        // cache may still show the Deployment alive, and adopting them back would make them
        // dependents of a deleted owner.
        let mut may_adopt = None;
        for rs in self.shared.rss.list_namespace(&ns) {
            let patch = match rcplan::claim(&uid, deleting, &selector, &rs.metadata) {
                Claim::Keep => {
                    mine.push(rs.as_ref().clone());
                    continue;
                }
                Claim::Ignore => continue,
                Claim::Adopt => {
                    if may_adopt.is_none() {
                        may_adopt = Some(self.still_alive(d).await?);
                    }
                    if may_adopt != Some(true) {
                        continue;
                    }
                    let r = rcplan::controller_reference("apps/v1", "Deployment", &d.metadata);
                    serde_json::json!({"metadata": {"ownerReferences": [r], "uid": rs.metadata.uid}})
                }
                Claim::Release => serde_json::json!({"metadata": {
                    "ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": rs.metadata.uid}}),
            };
            match api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(updated) => {
                    if util::controller_uid(&updated.metadata).as_deref() == Some(uid.as_str()) {
                        mine.push(updated.clone());
                    }
                    self.shared.rss.observe(updated);
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => {}
                Err(e) => anyhow::bail!("claim replica set {}: {e}", Key::of(rs.as_ref())),
            }
        }
        Ok(mine)
    }

    /// Whether the API still has this Deployment (same uid) and it is not being deleted.
    async fn still_alive(&self, d: &Deployment) -> anyhow::Result<bool> {
        let api: Api<Deployment> = Api::namespaced(
            self.shared.client.clone(),
            &d.namespace().unwrap_or_default(),
        );
        Ok(api.get_opt(&d.name_any()).await?.is_some_and(|fresh| {
            fresh.metadata.uid == d.metadata.uid && fresh.metadata.deletion_timestamp.is_none()
        }))
    }

    /// A resize of the Deployment that its active ReplicaSets have not seen yet.
    fn scaling_event(&self, d: &Deployment, rss: &[ReplicaSet]) -> bool {
        let want = replicas(d).to_string();
        rss.iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .any(|rs| annotation(&rs.metadata, DESIRED_REPLICAS).is_some_and(|v| v != want))
    }

    /// Split the ReplicaSets into new and old, sync revisions, create the new one if asked.
    async fn family(
        &self,
        d: &Deployment,
        mut rss: Vec<ReplicaSet>,
        create: bool,
    ) -> anyhow::Result<Family> {
        rss.sort_by(|a, b| {
            (created(&a.metadata), a.name_any()).cmp(&(created(&b.metadata), b.name_any()))
        });
        let wanted = without_hash(&deployment_template(d));
        let new_index = rss
            .iter()
            .position(|rs| without_hash(&template_of(rs)) == wanted);
        let new = new_index.map(|i| rss.remove(i));
        let old = rss;
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = max_old + 1;
        let mut family = Family {
            new,
            old,
            created: false,
        };
        match family.new.take() {
            Some(rs) => {
                let rs = if revision(&rs) < new_revision || self.annotations_stale(d, &rs) {
                    let rev = new_revision.max(revision(&rs));
                    self.update_annotations(d, rs, rev).await?
                } else {
                    rs
                };
                family.new = Some(rs);
            }
            None if create => {
                family.new = Some(self.create_new(d, &family, new_revision).await?);
                family.created = true;
            }
            None => {}
        }
        let rev = family
            .new
            .as_ref()
            .map_or(new_revision.max(1) - 1, revision);
        if rev > 0 && annotation(&d.metadata, REVISION) != Some(rev.to_string()) {
            let api: Api<Deployment> = Api::namespaced(
                self.shared.client.clone(),
                &d.namespace().unwrap_or_default(),
            );
            let patch =
                serde_json::json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
            match api
                .patch(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(updated) => self.shared.deployments.observe(updated),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => anyhow::bail!("set the revision of deployment {}: {e}", Key::of(d)),
            }
        }
        Ok(family)
    }

    fn annotations_stale(&self, d: &Deployment, rs: &ReplicaSet) -> bool {
        let (surge, _) = fenceposts(d);
        let want = replicas(d);
        annotation(&rs.metadata, DESIRED_REPLICAS) != Some(want.to_string())
            || annotation(&rs.metadata, MAX_REPLICAS) != Some((want + surge).to_string())
    }

    async fn update_annotations(
        &self,
        d: &Deployment,
        rs: ReplicaSet,
        rev: i64,
    ) -> anyhow::Result<ReplicaSet> {
        let (surge, _) = fenceposts(d);
        let want = replicas(d);
        let patch = serde_json::json!({"metadata": {"annotations": {
            REVISION: rev.to_string(),
            DESIRED_REPLICAS: want.to_string(),
            MAX_REPLICAS: (want + surge).to_string(),
        }}});
        self.patch_rs(&rs, &patch).await
    }

    /// Patch a ReplicaSet as the controller last saw it: the resourceVersion makes the write
    /// fail (409, and the sync is retried) if it changed meanwhile, so that sizes decided on a
    /// stale cache are never written (kube writes the whole object with the same effect).
    async fn patch_rs(
        &self,
        rs: &ReplicaSet,
        patch: &serde_json::Value,
    ) -> anyhow::Result<ReplicaSet> {
        let api: Api<ReplicaSet> = Api::namespaced(
            self.shared.client.clone(),
            &rs.namespace().unwrap_or_default(),
        );
        let mut patch = patch.clone();
        patch["metadata"]["resourceVersion"] = rs.metadata.resource_version.clone().into();
        let updated = api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| anyhow::anyhow!("update replica set {}: {e}", Key::of(rs)))?;
        self.shared.rss.observe(updated.clone());
        Ok(updated)
    }

    async fn create_new(
        &self,
        d: &Deployment,
        family: &Family,
        rev: i64,
    ) -> anyhow::Result<ReplicaSet> {
        let ns = d.namespace().unwrap_or_default();
        let spec = d.spec.as_ref().expect("checked");
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = hash::compute_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let (surge, _) = fenceposts(d);
        let want = replicas(d);
        let all: i32 = family.old.iter().map(rs_replicas).sum();
        let size = if is_rolling(d) {
            rollout::new_rs_replicas(want, surge, all, 0)
        } else {
            want
        };
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .collect();
        annotations.insert(REVISION.into(), rev.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
        annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
        let name = format!("{}-{hash}", d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![rcplan::controller_reference(
                    "apps/v1",
                    "Deployment",
                    &d.metadata,
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let api: Api<ReplicaSet> = Api::namespaced(self.shared.client.clone(), &ns);
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                self.shared.rss.observe(created.clone());
                if size > 0 {
                    self.recorder.normal(
                        &reference(d),
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {size}"),
                    );
                }
                Ok(created)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // The name is taken: ours with the same template is fine; else bump the collision
                // count so that the next hash differs.
                if let Some(existing) = api.get_opt(&name).await?
                    && util::controller_uid(&existing.metadata) == d.metadata.uid
                    && without_hash(&template_of(&existing)) == without_hash(&spec.template)
                {
                    return Ok(existing);
                }
                let count = collision.unwrap_or(0) + 1;
                let dapi: Api<Deployment> = Api::namespaced(self.shared.client.clone(), &ns);
                let patch = serde_json::json!({"status": {"collisionCount": count}});
                dapi.patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                anyhow::bail!(
                    "replica set {name} exists with another template: collision count is now {count}"
                )
            }
            Err(e) => anyhow::bail!("create replica set {name}: {e}"),
        }
    }

    /// Scale `rs` to `size` (and refresh its replica annotations), with an event.
    async fn scale_rs(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        size: i32,
    ) -> anyhow::Result<ReplicaSet> {
        let from = rs_replicas(rs);
        if from == size && !self.annotations_stale(d, rs) {
            return Ok(rs.clone());
        }
        let (surge, _) = fenceposts(d);
        let want = replicas(d);
        let patch = serde_json::json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: want.to_string(), MAX_REPLICAS: (want + surge).to_string()}},
            "spec": {"replicas": size},
        });
        let updated = self.patch_rs(rs, &patch).await?;
        if from != size {
            let direction = if size > from { "up" } else { "down" };
            self.recorder.normal(
                &reference(d),
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {size}",
                    rs.name_any()
                ),
            );
        }
        Ok(updated)
    }

    /// Re-read the family's ReplicaSets from the cache (after our writes).
    fn refresh(&self, family: Family) -> Family {
        let get = |rs: ReplicaSet| {
            self.shared
                .rss
                .get(&Key::of(&rs))
                .map(|r| r.as_ref().clone())
                .unwrap_or(rs)
        };
        Family {
            new: family.new.map(get),
            old: family.old.into_iter().map(get).collect(),
            created: family.created,
        }
    }

    async fn rolling(
        &self,
        d: &Deployment,
        rss: Vec<ReplicaSet>,
    ) -> anyhow::Result<Option<Duration>> {
        let family = self.family(d, rss, true).await?;
        let want = replicas(d);
        let (surge, unavailable) = fenceposts(d);
        // 1. Grow (or shrink) the new ReplicaSet.
        if let Some(new) = &family.new {
            let current = rs_replicas(new);
            let all: i32 = family.all().iter().map(|r| rs_replicas(r)).sum();
            let target = if current > want {
                want
            } else {
                rollout::new_rs_replicas(want, surge, all, current)
            };
            if target != current {
                self.scale_rs(d, new, target).await?;
                let family = self.refresh(family);
                self.sync_status(d, &family).await?;
                return Ok(None);
            }
        }
        // 2. Shrink the old ones as far as availability allows.
        let old_views: Vec<rollout::Rs> = family.old.iter().map(view).collect();
        if old_views.iter().map(|r| r.replicas).sum::<i32>() > 0 {
            let all_views = family.views();
            let all: i32 = all_views.iter().map(|r| r.replicas).sum();
            let new_view = family.new.as_ref().map(view);
            let max_down = rollout::max_scaled_down(want, unavailable, all, new_view.as_ref());
            if max_down > 0 {
                let (cleanups, _) = rollout::cleanup_unhealthy(&old_views, max_down);
                self.apply_sizes(d, &family.old, &cleanups).await?;
                let family2 = self.refresh(Family {
                    new: family.new.clone(),
                    old: family.old.clone(),
                    created: family.created,
                });
                let old_views: Vec<rollout::Rs> = family2.old.iter().map(view).collect();
                let downs =
                    rollout::scale_down_old(&family2.views(), &old_views, want, unavailable);
                self.apply_sizes(d, &family2.old, &downs).await?;
            }
        }
        let family = self.refresh(family);
        if self.complete(d, &family) {
            self.cleanup(d, &family).await?;
        }
        self.sync_status(d, &family).await?;
        Ok(None)
    }

    async fn apply_sizes(
        &self,
        d: &Deployment,
        rss: &[ReplicaSet],
        sizes: &[(String, i32)],
    ) -> anyhow::Result<()> {
        for (name, size) in sizes {
            if let Some(rs) = rss.iter().find(|r| r.name_any() == *name) {
                let current = self
                    .shared
                    .rss
                    .get(&Key::of(rs))
                    .map(|r| r.as_ref().clone())
                    .unwrap_or_else(|| rs.clone());
                self.scale_rs(d, &current, *size).await?;
            }
        }
        Ok(())
    }

    async fn recreate(
        &self,
        d: &Deployment,
        rss: Vec<ReplicaSet>,
    ) -> anyhow::Result<Option<Duration>> {
        let family = self.family(d, rss, false).await?;
        // 1. Old ReplicaSets to 0.
        let mut scaled = false;
        for rs in family.old.iter().filter(|r| rs_replicas(r) > 0) {
            self.scale_rs(d, rs, 0).await?;
            scaled = true;
        }
        if scaled {
            let family = self.refresh(family);
            self.sync_status(d, &family).await?;
            return Ok(None);
        }
        // 2. Wait for their pods to be gone.
        let old_uids: Vec<String> = family
            .old
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        let ns = d.namespace().unwrap_or_default();
        let old_running = self.shared.pods.list_namespace(&ns).iter().any(|p| {
            !util::is_terminated(p)
                && util::controller_uid(&p.metadata).is_some_and(|u| old_uids.contains(&u))
        });
        if old_running {
            self.sync_status(d, &family).await?;
            return Ok(None);
        }
        // 3. The new ReplicaSet, at full size.
        let mut family = family;
        if family.new.is_none() {
            let rss: Vec<ReplicaSet> = family.old.clone();
            family = self.family(d, rss, true).await?;
        }
        if let Some(new) = &family.new {
            self.scale_rs(d, new, replicas(d)).await?;
        }
        let family = self.refresh(family);
        if self.complete(d, &family) {
            self.cleanup(d, &family).await?;
        }
        self.sync_status(d, &family).await?;
        Ok(None)
    }

    /// Resize in proportion (`dc.scale`).
    async fn scale(&self, d: &Deployment, family: &Family) -> anyhow::Result<()> {
        let want = replicas(d);
        let all = family.all();
        let active: Vec<&ReplicaSet> = all.iter().copied().filter(|r| rs_replicas(r) > 0).collect();
        let only = match active.len() {
            0 => family.new.as_ref().or_else(|| {
                family
                    .old
                    .iter()
                    .max_by_key(|r| (created(&r.metadata), r.name_any()))
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(rs) = only {
            return self.scale_rs(d, rs, want).await.map(|_| ());
        }
        let saturated = family.new.as_ref().is_some_and(|n| {
            rs_replicas(n) == want
                && annotation(&n.metadata, DESIRED_REPLICAS) == Some(want.to_string())
                && n.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    == want
        });
        if saturated {
            for rs in family.old.iter().filter(|r| rs_replicas(r) > 0) {
                self.scale_rs(d, rs, 0).await?;
            }
            return Ok(());
        }
        if is_rolling(d) {
            let (surge, _) = fenceposts(d);
            let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let views: Vec<rollout::Rs> = active.iter().map(|r| view(r)).collect();
            let sizes = rollout::proportional(&views, want, surge, status_replicas);
            let owned: Vec<ReplicaSet> = active.into_iter().cloned().collect();
            self.apply_sizes(d, &owned, &sizes).await?;
        }
        Ok(())
    }

    fn complete(&self, d: &Deployment, family: &Family) -> bool {
        let new_view = family.new.as_ref().map(view);
        rollout::complete(
            replicas(d),
            &rollout::counts(&family.views(), new_view.as_ref()),
        )
    }

    /// Delete old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest revision first.
    async fn cleanup(&self, d: &Deployment, family: &Family) -> anyhow::Result<()> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut cleanable: Vec<&ReplicaSet> = family
            .old
            .iter()
            .filter(|rs| {
                let status = rs.status.clone().unwrap_or_default();
                rs_replicas(rs) == 0
                    && status.replicas == 0
                    && rs.metadata.generation.unwrap_or(0)
                        <= status.observed_generation.unwrap_or(0)
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if cleanable.len() <= limit {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| (revision(rs), created(&rs.metadata)));
        let excess = cleanable.len() - limit;
        for rs in cleanable.into_iter().take(excess) {
            let api: Api<ReplicaSet> = Api::namespaced(
                self.shared.client.clone(),
                &rs.namespace().unwrap_or_default(),
            );
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: rs.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&rs.name_any(), &params).await {
                Ok(_) => {
                    tracing::info!(rs = %Key::of(rs), "old replica set deleted (revision history limit)")
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => anyhow::bail!("delete old replica set {}: {e}", Key::of(rs)),
            }
        }
        Ok(())
    }

    async fn sync_status(&self, d: &Deployment, family: &Family) -> anyhow::Result<()> {
        let want = replicas(d);
        let (_, unavailable) = fenceposts(d);
        let new_view = family.new.as_ref().map(view);
        let counts = rollout::counts(&family.views(), new_view.as_ref());
        let old = d.status.clone().unwrap_or_default();
        let old_counts = rollout::Counts {
            replicas: old.replicas.unwrap_or(0),
            updated: old.updated_replicas.unwrap_or(0),
            ready: old.ready_replicas.unwrap_or(0),
            available: old.available_replicas.unwrap_or(0),
            unavailable: old.unavailable_replicas.unwrap_or(0),
        };
        let mut conditions = old.conditions.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let available = if counts.available >= want - unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut conditions,
            "Available",
            available.0,
            available.1,
            available.2.into(),
            &now,
        );
        let new_name = family
            .new
            .as_ref()
            .map(|r| r.name_any())
            .unwrap_or_default();
        if family.created {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{new_name}\""),
                &now,
            );
        } else if family.new.is_some() && rollout::complete(want, &counts) {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                &now,
            );
        } else if family.new.is_some() && rollout::progressing(&old_counts, &counts) {
            set_condition(
                &mut conditions,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                &now,
            );
        }
        let generation = d.metadata.generation.unwrap_or(0);
        let unchanged = old_counts == counts
            && old.observed_generation == Some(generation)
            && old.conditions.clone().unwrap_or_default() == conditions;
        if unchanged {
            return Ok(());
        }
        let opt = |n: i32| {
            if n == 0 {
                serde_json::Value::Null
            } else {
                n.into()
            }
        };
        let patch = serde_json::json!({"status": {
            "observedGeneration": generation,
            "replicas": opt(counts.replicas),
            "updatedReplicas": opt(counts.updated),
            "readyReplicas": opt(counts.ready),
            "availableReplicas": opt(counts.available),
            "unavailableReplicas": opt(counts.unavailable),
            "conditions": conditions,
        }});
        let api: Api<Deployment> = Api::namespaced(
            self.shared.client.clone(),
            &d.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                self.shared.deployments.observe(updated);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => anyhow::bail!("update status of deployment {}: {e}", Key::of(d)),
        }
    }
}

/// `SetDeploymentCondition`: nothing changes if status and reason are the same; the transition
/// time is kept while the status stays.
fn set_condition(
    conditions: &mut Vec<DeploymentCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) {
    let current = conditions.iter().position(|c| c.type_ == kind);
    if let Some(i) = current {
        let c = &conditions[i];
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return;
        }
        let transition = if c.status == status {
            c.last_transition_time.clone()
        } else {
            Some(now.clone())
        };
        conditions[i] = DeploymentCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: transition,
        };
    } else {
        conditions.push(DeploymentCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        });
    }
}
