//! The DaemonSet controller (kube's `pkg/controller/daemon`): one pod on every eligible node,
//! pinned to it with a required node affinity on `metadata.name` (the scheduler binds it), with
//! the daemon tolerations added; pods on nodes that no longer qualify (selector, affinity, an
//! untolerated NoExecute taint) are deleted; templates roll out by `RollingUpdate`
//! (`maxUnavailable`, `maxSurge`) or `OnDelete`. Pods carry the template's revision hash
//! (`controller-revision-hash`, kube's `ComputeHash` of the template) and `pod-template-generation`.
//! The pure decisions are in [`plan`].
//!
//! Each template is also kept as a ControllerRevision `<ds>-<hash>` ([`super::history`]), so
//! `kubectl rollout history/undo daemonset` work.

pub mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use super::Shared;
use super::deployment::hash::compute_hash;
use super::expectations::Expectations;
use super::informer::{Change, Key};
use super::job::delete_pod;
use super::queue::{WorkQueue, run_worker};
use super::replication::plan::{controller_reference, pod_from_template, pod_prefix};
use super::util;
use crate::events::{Recorder, reference};

const COMPONENT: &str = "daemonset-controller";

fn owning_daemon_set(p: &Pod) -> Option<Key> {
    util::controller_ref(&p.metadata)
        .filter(|r| r.kind == "DaemonSet" && r.api_version == "apps/v1")
        .map(|r| Key::new(p.namespace().unwrap_or_default(), r.name.clone()))
}

struct Controller {
    shared: Arc<Shared>,
    recorder: Recorder,
    expectations: Arc<Mutex<Expectations>>,
}

/// Register the handlers now; the future syncs DaemonSets forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    let expectations = Arc::new(Mutex::new(Expectations::default()));
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        shared.daemonsets.on_change(move |change| match change {
            Change::Applied { new, .. } => queue.add(Key::of(*new)),
            Change::Deleted(old) => expectations
                .lock()
                .expect("expectations lock")
                .forget(&Key::of(*old)),
        });
    }
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        shared.pods.on_change(move |change| {
            let pod = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(p) => *p,
            };
            let Some(ds) = owning_daemon_set(pod) else {
                return;
            };
            {
                let mut e = expectations.lock().expect("expectations lock");
                match change {
                    Change::Applied { old: None, .. } => e.creation_observed(&ds),
                    Change::Applied { old: Some(o), new }
                        if new.metadata.deletion_timestamp.is_some()
                            && o.metadata.deletion_timestamp.is_none() =>
                    {
                        e.deletion_observed(&ds, &Key::of(*new))
                    }
                    Change::Deleted(p) => e.deletion_observed(&ds, &Key::of(*p)),
                    _ => {}
                }
            }
            queue.add(ds);
        });
    }
    {
        // A node that comes, goes or changes its labels or taints concerns every DaemonSet.
        let queue = queue.clone();
        let daemonsets = shared.daemonsets.clone();
        shared.nodes.on_change(move |change| {
            let relevant = match change {
                Change::Applied { old: None, .. } | Change::Deleted(_) => true,
                Change::Applied { old: Some(o), new } => {
                    o.metadata.labels != new.metadata.labels
                        || o.spec.as_ref().map(|s| &s.taints)
                            != new.spec.as_ref().map(|s| &s.taints)
                        || o.spec.as_ref().map(|s| s.unschedulable)
                            != new.spec.as_ref().map(|s| s.unschedulable)
                }
            };
            if relevant {
                for ds in daemonsets.list() {
                    queue.add(Key::of(ds.as_ref()));
                }
            }
        });
    }
    async move {
        shared.synced().await;
        let controller = Arc::new(Controller {
            recorder: Recorder::new(shared.client.clone(), COMPONENT, None),
            shared,
            expectations,
        });
        run_worker(COMPONENT, queue, move |key| {
            let c = controller.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

impl Controller {
    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().expect("expectations lock")
    }

    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(ds) = self.shared.daemonsets.get(key) else {
            self.expectations().forget(key);
            return Ok(None);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let collision = ds.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&template, collision);
        let nodes = self.shared.nodes.list();
        let node_refs: Vec<_> = nodes.iter().map(|n| n.as_ref()).collect();
        let pods: Vec<Arc<Pod>> = self
            .shared
            .pods
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|p| util::controller_uid(&p.metadata).as_deref() == Some(uid.as_str()))
            .collect();
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(plan::REVISION_HASH.into(), hash.clone());
        let in_use: Vec<String> = refs
            .iter()
            .filter_map(|p| p.metadata.labels.as_ref()?.get(plan::REVISION_HASH))
            .map(|h| format!("{}-{h}", key.name))
            .collect();
        super::history::sync(
            &self.shared,
            &controller_reference("apps/v1", "DaemonSet", ds.meta()),
            &key.namespace,
            &format!("{}-{hash}", key.name),
            &template,
            labels,
            ds.spec
                .as_ref()
                .and_then(|s| s.revision_history_limit)
                .unwrap_or(10),
            &in_use,
        )
        .await?;
        let now = jiff::Timestamp::now();
        let plan = plan::plan(&ds, &node_refs, &refs, &hash, now);

        let pods_api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        let ds_ref = reference(ds.as_ref());
        let mut failure = None;
        if self.expectations().satisfied(key, Instant::now()) {
            if !plan.delete.is_empty() {
                self.expectations().expect_deletions(
                    key,
                    plan.delete
                        .iter()
                        .map(|n| Key::new(key.namespace.clone(), n)),
                    Instant::now(),
                );
                let victims: Vec<&Pod> = refs
                    .iter()
                    .copied()
                    .filter(|p| plan.delete.contains(&p.name_any()))
                    .collect();
                let results = join_all(victims.iter().map(|p| delete_pod(&pods_api, p))).await;
                for (pod, r) in victims.iter().zip(results) {
                    match r {
                        Ok(true) => self.recorder.normal(
                            &ds_ref,
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", pod.name_any()),
                        ),
                        Ok(false) => self.expectations().deletion_observed(key, &Key::of(*pod)),
                        Err(e) => {
                            self.expectations().deletion_observed(key, &Key::of(*pod));
                            self.recorder.warning(
                                &ds_ref,
                                "FailedDelete",
                                format!("Error deleting: {e}"),
                            );
                            failure.get_or_insert(e);
                        }
                    }
                }
            } else if !plan.create.is_empty() {
                self.expectations()
                    .expect_creations(key, plan.create.len(), Instant::now());
                let results = join_all(
                    plan.create
                        .iter()
                        .map(|node| self.create_pod(&pods_api, &ds, &hash, node)),
                )
                .await;
                for (node, r) in plan.create.iter().zip(results) {
                    match r {
                        Ok(name) => self.recorder.normal(
                            &ds_ref,
                            "SuccessfulCreate",
                            format!("Created pod: {name}"),
                        ),
                        Err(e) => {
                            self.expectations().creation_observed(key);
                            self.recorder.warning(
                                &ds_ref,
                                "FailedCreate",
                                format!("Error creating: {e} on node {node}"),
                            );
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
        }

        let mut status = plan.status.clone();
        // Counts the API server's defaults fill (so an unchanged status is not rewritten).
        if let Some(old) = ds.status.as_ref() {
            status.collision_count = old.collision_count;
            status.conditions = old.conditions.clone();
        }
        if ds.status.as_ref() != Some(&status) {
            let api: Api<DaemonSet> = Api::namespaced(self.shared.client.clone(), &key.namespace);
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => self.shared.daemonsets.observe(updated),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => anyhow::bail!("update status of daemonset {key}: {e}"),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        Ok(
            (plan.recheck_available && min_ready > 0)
                .then(|| Duration::from_secs(min_ready as u64)),
        )
    }

    async fn create_pod(
        &self,
        api: &Api<Pod>,
        ds: &DaemonSet,
        hash: &str,
        node: &str,
    ) -> anyhow::Result<String> {
        let meta = ds.meta();
        let prefix = pod_prefix(meta.name.as_deref().unwrap_or_default());
        let template = plan::pod_template(ds, hash);
        let reference = controller_reference("apps/v1", "DaemonSet", meta);
        let ns = meta.namespace.clone().unwrap_or_default();
        let mut last = None;
        for _ in 0..4 {
            let name = self.shared.generate_name(&prefix);
            let mut pod = pod_from_template(&template, &ns, &prefix, &name, reference.clone());
            if let Some(spec) = pod.spec.as_mut() {
                plan::pin_to_node(spec, node);
            }
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                    last = Some(s.message)
                }
                Err(kube::Error::Api(s)) => anyhow::bail!("{}", s.message),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        anyhow::bail!("{}", last.unwrap_or_default())
    }
}
