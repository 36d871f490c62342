//! The ReplicationController and ReplicaSet controllers (one implementation, two kinds): keep
//! `spec.replicas` active pods, created from the template, as kube's `ReplicaSetController`.
//!
//! A sync of one owner: claim the active pods of its namespace (adopt matching orphans after
//! re-reading the owner, release pods that stopped matching), create or delete the difference
//! (slow-start batches of 1, 2, 4, ... creations; deletions in kube's ranking), record
//! `SuccessfulCreate`/`SuccessfulDelete` (`FailedCreate`/`FailedDelete`) events, and write the
//! status counts and `observedGeneration`. Pods being deleted and finished pods are not counted,
//! so an evicted pod is replaced at once.
//!
//! Expectations ([`super::expectations`]), as kube's: before creating or deleting pods a sync
//! records how many creations and which deletions it asked for; informer events of the owner's
//! pods lower them, and until they are met (or five minutes have passed) later syncs update the
//! status only. So a lagging informer, or one that lists again after the API server restarted,
//! never makes an owner create the same pods twice.
//!
//! Not done: the `ReplicaFailure` status condition.

pub mod plan;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Shared;
use super::expectations::Expectations;
use super::informer::{Change, Informer, Key};
use super::queue::{WorkQueue, run_worker};
use super::util::{self, Selector};
use crate::events::{Recorder, reference};
use plan::{Claim, ReplicaCounts};

/// What the controller needs from an owner kind.
pub trait ReplicaOwner:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The event source component.
    const COMPONENT: &'static str;
    fn informer(shared: &Shared) -> &Informer<Self>;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn selector(&self) -> Selector;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The status as last written: counts and observed generation.
    fn current_status(&self) -> (ReplicaCounts, Option<i64>);
}

impl ReplicaOwner for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn informer(shared: &Shared) -> &Informer<Self> {
        &shared.rcs
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn selector(&self) -> Selector {
        Selector::from_map(self.spec.as_ref().and_then(|s| s.selector.as_ref()))
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn current_status(&self) -> (ReplicaCounts, Option<i64>) {
        let s = self.status.clone().unwrap_or_default();
        (
            ReplicaCounts {
                replicas: s.replicas,
                fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
                ready_replicas: s.ready_replicas.unwrap_or(0),
                available_replicas: s.available_replicas.unwrap_or(0),
            },
            s.observed_generation,
        )
    }
}

impl ReplicaOwner for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn informer(shared: &Shared) -> &Informer<Self> {
        &shared.rss
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn selector(&self) -> Selector {
        match self.spec.as_ref() {
            Some(s) => Selector::from_label_selector(&s.selector),
            None => Selector::from_map(None),
        }
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn current_status(&self) -> (ReplicaCounts, Option<i64>) {
        let s = self.status.clone().unwrap_or_default();
        (
            ReplicaCounts {
                replicas: s.replicas,
                fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
                ready_replicas: s.ready_replicas.unwrap_or(0),
                available_replicas: s.available_replicas.unwrap_or(0),
            },
            s.observed_generation,
        )
    }
}

/// The controller for one owner kind.
pub struct Controller<K> {
    shared: Arc<Shared>,
    recorder: Recorder,
    expectations: Arc<Mutex<Expectations>>,
    _kind: PhantomData<K>,
}

fn is_kind<K: Resource<DynamicType = ()>>(
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> bool {
    r.kind == K::kind(&()) && r.api_version == K::api_version(&())
}

/// Register the event handlers now; the returned future processes the queue forever once the
/// caches are synced.
pub fn run<K: ReplicaOwner>(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    let expectations = Arc::new(Mutex::new(Expectations::default()));
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        K::informer(&shared).on_change(move |change| match change {
            Change::Applied { new, .. } => queue.add(Key::of(*new)),
            Change::Deleted(old) => expectations
                .lock()
                .expect("expectations lock")
                .forget(&Key::of(*old)),
        });
    }
    {
        let queue = queue.clone();
        let owners = K::informer(&shared).clone();
        let expectations = expectations.clone();
        shared.pods.on_change(move |change| {
            let (old, new) = match change {
                Change::Applied { old, new } => (*old, *new),
                Change::Deleted(p) => (None, *p),
            };
            let ns = new.namespace().unwrap_or_default();
            let owner_of = |p: &Pod| {
                util::controller_ref(&p.metadata)
                    .filter(|r| is_kind::<K>(r))
                    .map(|r| Key::new(ns.clone(), r.name.clone()))
            };
            if let Some(owner) = owner_of(new) {
                observe(&expectations, &owner, change);
            }
            match owner_of(new) {
                Some(key) => queue.add(key),
                None if util::controller_ref(&new.metadata).is_none()
                    && matches!(change, Change::Applied { .. }) =>
                {
                    let labels_changed =
                        old.is_none_or(|o| o.metadata.labels != new.metadata.labels);
                    if labels_changed {
                        for owner in owners.list_namespace(&ns) {
                            if owner.selector().matches(new.metadata.labels.as_ref()) {
                                queue.add(Key::of(owner.as_ref()));
                            }
                        }
                    }
                }
                None => {}
            }
            if let Some(old) = old
                && let Some(key) = owner_of(old)
                && owner_of(new).as_ref() != Some(&key)
            {
                queue.add(key);
            }
        });
    }
    async move {
        shared.synced().await;
        let controller = Arc::new(Controller::<K> {
            recorder: Recorder::new(shared.client.clone(), K::COMPONENT, None),
            shared,
            expectations,
            _kind: PhantomData,
        });
        run_worker(K::COMPONENT, queue, move |key| {
            let c = controller.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

/// Lower the owner's expectations by what an informer event of one of its pods shows: a new pod
/// is a creation; a pod that got a deletionTimestamp, or is gone, is a deletion.
fn observe(expectations: &Mutex<Expectations>, owner: &Key, change: &Change<'_, Pod>) {
    let mut e = expectations.lock().expect("expectations lock");
    let deleting = |p: &Pod| p.metadata.deletion_timestamp.is_some();
    match change {
        Change::Applied { old: None, new } => {
            e.creation_observed(owner);
            if deleting(new) {
                e.deletion_observed(owner, &Key::of(*new));
            }
        }
        Change::Applied {
            old: Some(old),
            new,
        } => {
            if deleting(new) && !deleting(old) {
                e.deletion_observed(owner, &Key::of(*new));
            }
        }
        Change::Deleted(p) => e.deletion_observed(owner, &Key::of(*p)),
    }
}

impl<K: ReplicaOwner> Controller<K> {
    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(owner) = K::informer(&self.shared).get(key) else {
            self.expectations().forget(key);
            return Ok(None);
        };
        let meta = owner.meta();
        let owner_uid = meta.uid.clone().unwrap_or_default();
        let deleting = meta.deletion_timestamp.is_some();
        let selector = owner.selector();
        let pods_api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);

        // Claim.
        let mut mine: Vec<Arc<Pod>> = Vec::new();
        let mut adopt = Vec::new();
        for pod in self.shared.pods.list_namespace(&key.namespace) {
            if !util::is_active(&pod) {
                continue;
            }
            match plan::claim(&owner_uid, deleting, &selector, &pod.metadata) {
                Claim::Keep => mine.push(pod),
                Claim::Adopt => adopt.push(pod),
                Claim::Release => self.release(&pods_api, &pod, &owner_uid).await?,
                Claim::Ignore => {}
            }
        }
        if !adopt.is_empty() && self.can_adopt(key, &owner_uid).await? {
            for pod in adopt {
                if let Some(p) = self.adopt(&pods_api, &pod, owner.as_ref()).await? {
                    mine.push(p);
                }
            }
        }

        // Until the informer shows what the last sync asked for, act on nothing: the cache may not
        // hold those pods yet (or no longer, after a re-list), and creating them again is what
        // expectations prevent.
        let satisfied = self.expectations().satisfied(key, Instant::now());
        let managed = if !deleting && satisfied {
            self.manage(key, owner.as_ref(), &pods_api, mine).await
        } else {
            Ok(())
        };

        // Status from the cache, also when the pods could not be managed (kube writes it still).
        let now = jiff::Timestamp::now();
        let active: Vec<Arc<Pod>> = self
            .shared
            .pods
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|p| {
                util::is_active(p)
                    && util::controller_uid(&p.metadata).as_deref() == Some(&owner_uid)
            })
            .collect();
        let refs: Vec<&Pod> = active.iter().map(|p| p.as_ref()).collect();
        let template_labels = owner
            .template()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        let min_ready = owner.min_ready_seconds();
        let counts = plan::count(&refs, template_labels, min_ready, now);
        let generation = meta.generation.unwrap_or(0);
        if owner.current_status() != (counts, Some(generation)) {
            let api: Api<K> = Api::namespaced(self.shared.client.clone(), &key.namespace);
            let patch = plan::status_patch(counts, generation);
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => K::informer(&self.shared).observe(updated),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => anyhow::bail!("update status of {} {key}: {e}", K::kind(&())),
            }
        }
        managed?;
        // Pods that are ready but not yet available become available later.
        if min_ready > 0 && counts.ready_replicas > counts.available_replicas {
            return Ok(Some(Duration::from_secs(min_ready as u64)));
        }
        Ok(None)
    }

    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().expect("expectations lock")
    }

    /// Re-read the owner: adopt only if it is still the same object and not being deleted.
    async fn can_adopt(&self, key: &Key, uid: &str) -> anyhow::Result<bool> {
        let api: Api<K> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        Ok(match api.get_opt(&key.name).await? {
            Some(fresh) => {
                fresh.meta().uid.as_deref() == Some(uid)
                    && fresh.meta().deletion_timestamp.is_none()
            }
            None => false,
        })
    }

    async fn adopt(
        &self,
        api: &Api<Pod>,
        pod: &Pod,
        owner: &K,
    ) -> anyhow::Result<Option<Arc<Pod>>> {
        let reference =
            plan::controller_reference(&K::api_version(&()), &K::kind(&()), owner.meta());
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": [reference], "uid": pod.metadata.uid}});
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(p) => {
                tracing::info!(pod = %Key::of(pod), owner = %Key::of(owner), "adopted");
                self.shared.pods.observe(p.clone());
                Ok(Some(Arc::new(p)))
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => Ok(None),
            Err(e) => anyhow::bail!("adopt pod {}: {e}", Key::of(pod)),
        }
    }

    async fn release(&self, api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> anyhow::Result<()> {
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": pod.metadata.uid}});
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(p) => {
                tracing::info!(pod = %Key::of(pod), "released");
                self.shared.pods.observe(p);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => Ok(()),
            Err(e) => anyhow::bail!("release pod {}: {e}", Key::of(pod)),
        }
    }

    /// Create or delete pods so that `mine` becomes `spec.replicas` pods, expecting each one
    /// asked for.
    async fn manage(
        &self,
        key: &Key,
        owner: &K,
        api: &Api<Pod>,
        mine: Vec<Arc<Pod>>,
    ) -> anyhow::Result<()> {
        let want = owner.replicas().max(0) as usize;
        let have = mine.len();
        let owner_ref = reference(owner);
        if have < want {
            let Some(template) = owner.template() else {
                return Ok(());
            };
            let n = (want - have).min(plan::BURST_REPLICAS);
            self.expectations().expect_creations(key, n, Instant::now());
            let mut created = 0;
            let mut failure = None;
            for batch in plan::slow_start_batches(n) {
                let results =
                    join_all((0..batch).map(|_| self.create_pod(api, owner, template))).await;
                for r in results {
                    match r {
                        Ok(name) => {
                            created += 1;
                            self.recorder.normal(
                                &owner_ref,
                                "SuccessfulCreate",
                                format!("Created pod: {name}"),
                            )
                        }
                        Err(e) => {
                            self.recorder.warning(
                                &owner_ref,
                                "FailedCreate",
                                format!("Error creating: {e}"),
                            );
                            failure = Some(e);
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            // Creations that failed or were skipped will never show in the informer.
            for _ in created..n {
                self.expectations().creation_observed(key);
            }
            if let Some(e) = failure {
                anyhow::bail!("create pods for {} {}: {e}", K::kind(&()), Key::of(owner));
            }
        } else if have > want {
            let n = (have - want).min(plan::BURST_REPLICAS);
            let related = self.related_pods(owner);
            let related: Vec<&Pod> = related.iter().map(|p| p.as_ref()).collect();
            let candidates: Vec<&Pod> = mine.iter().map(|p| p.as_ref()).collect();
            let ranked = plan::rank_for_deletion(candidates, &related, jiff::Timestamp::now());
            let victims: Vec<&Pod> = ranked.into_iter().take(n).collect();
            self.expectations().expect_deletions(
                key,
                victims.iter().map(|p| Key::of(*p)),
                Instant::now(),
            );
            let results = join_all(victims.iter().map(|p| self.delete_pod(api, p))).await;
            let mut failure = None;
            for (pod, r) in victims.iter().zip(results) {
                match r {
                    Ok(Some(name)) => self.recorder.normal(
                        &owner_ref,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    ),
                    // Gone already: the informer may have shown it before we expected it.
                    Ok(None) => self.expectations().deletion_observed(key, &Key::of(*pod)),
                    Err(e) => {
                        self.expectations().deletion_observed(key, &Key::of(*pod));
                        self.recorder.warning(
                            &owner_ref,
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Pods whose co-location counts for deletion ranking: those of the owner and, for a
    /// ReplicaSet of a Deployment, of its sibling ReplicaSets.
    fn related_pods(&self, owner: &K) -> Vec<Arc<Pod>> {
        let ns = owner.namespace().unwrap_or_default();
        let own = owner.meta().uid.clone().unwrap_or_default();
        let mut family = vec![own];
        if let Some(parent) = util::controller_uid(owner.meta()) {
            for sibling in K::informer(&self.shared).list_namespace(&ns) {
                if util::controller_uid(sibling.meta()).as_deref() == Some(parent.as_str()) {
                    family.extend(sibling.meta().uid.clone());
                }
            }
        }
        self.shared
            .pods
            .list_namespace(&ns)
            .into_iter()
            .filter(|p| util::controller_uid(&p.metadata).is_some_and(|u| family.contains(&u)))
            .collect()
    }

    async fn create_pod(
        &self,
        api: &Api<Pod>,
        owner: &K,
        template: &PodTemplateSpec,
    ) -> anyhow::Result<String> {
        let meta = owner.meta();
        let prefix = plan::pod_prefix(meta.name.as_deref().unwrap_or_default());
        let reference = plan::controller_reference(&K::api_version(&()), &K::kind(&()), meta);
        let ns = meta.namespace.clone().unwrap_or_default();
        let mut last_err = None;
        // A generated name can collide; try a few.
        for _ in 0..4 {
            let name = self.shared.generate_name(&prefix);
            let pod = plan::pod_from_template(template, &ns, &prefix, &name, reference.clone());
            // Not written through to the cache: the expectations wait for the informer.
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                    last_err = Some(s.message);
                }
                Err(kube::Error::Api(s)) => anyhow::bail!("{}", s.message),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        anyhow::bail!("{}", last_err.unwrap_or_default())
    }

    /// Delete a pod (gracefully); `None` if it was gone already.
    async fn delete_pod(&self, api: &Api<Pod>, pod: &Pod) -> anyhow::Result<Option<String>> {
        let name = pod.name_any();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(Some(name)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(kube::Error::Api(s)) => anyhow::bail!("{}", s.message),
            Err(e) => anyhow::bail!("{e}"),
        }
    }
}
