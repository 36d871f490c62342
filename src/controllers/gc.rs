//! The garbage collector, as kube's: ownership is `metadata.ownerReferences` by uid.
//!
//! - A dependent whose owners no longer exist (none with that name *and* uid) is deleted
//!   (propagation `Background`); when only some owners are gone, the dangling references are
//!   removed. An owner missing from the cache is confirmed with a GET before anything is deleted,
//!   and owners of kinds kemu does not watch are assumed to exist.
//! - An object being deleted with the `orphan` finalizer (`--cascade=orphan`) has the references
//!   to it removed from its dependents, then the finalizer removed.
//! - An object being deleted with `foregroundDeletion` (`--cascade=foreground`) has its
//!   dependents deleted (foreground again for those that own things) and keeps the finalizer
//!   until no dependent with `blockOwnerDeletion` remains.
//!
//! Covered kinds, as owners and dependents: Pods, ReplicationControllers, ReplicaSets,
//! Deployments, Services, EndpointSlices, Jobs, CronJobs, DaemonSets, StatefulSets,
//! PersistentVolumeClaims and ControllerRevisions (in one namespace, as owner references require).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};

use super::Shared;
use super::informer::{Change, Informer, Key};
use super::queue::{WorkQueue, run_worker};

pub const ORPHAN: &str = "orphan";
pub const FOREGROUND: &str = "foregroundDeletion";

/// The kinds the collector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    ReplicationController,
    ReplicaSet,
    Deployment,
    Service,
    EndpointSlice,
    Job,
    CronJob,
    DaemonSet,
    StatefulSet,
    PersistentVolumeClaim,
    ControllerRevision,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Pod,
        Kind::ReplicationController,
        Kind::ReplicaSet,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Job,
        Kind::CronJob,
        Kind::DaemonSet,
        Kind::StatefulSet,
        Kind::PersistentVolumeClaim,
        Kind::ControllerRevision,
    ];

    /// (group, version, kind, plural)
    fn gvk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::ReplicationController => {
                ("", "v1", "ReplicationController", "replicationcontrollers")
            }
            Kind::ReplicaSet => ("apps", "v1", "ReplicaSet", "replicasets"),
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Job => ("batch", "v1", "Job", "jobs"),
            Kind::CronJob => ("batch", "v1", "CronJob", "cronjobs"),
            Kind::DaemonSet => ("apps", "v1", "DaemonSet", "daemonsets"),
            Kind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
            Kind::PersistentVolumeClaim => {
                ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
            }
            Kind::ControllerRevision => ("apps", "v1", "ControllerRevision", "controllerrevisions"),
        }
    }

    fn api_version(self) -> String {
        let (g, v, _, _) = self.gvk();
        if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        }
    }

    /// The kind an owner reference points to, if the collector knows it.
    pub fn of_reference(r: &OwnerReference) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.gvk().2 == r.kind && k.api_version() == r.api_version)
    }

    /// Whether objects of this kind own others (and so are deleted in foreground in turn).
    fn owns_things(self) -> bool {
        !matches!(
            self,
            Kind::Pod
                | Kind::EndpointSlice
                | Kind::PersistentVolumeClaim
                | Kind::ControllerRevision
        )
    }

    fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.gvk();
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: self.api_version(),
            kind: kind.into(),
            plural: plural.into(),
        }
    }
}

/// One object for the collector to look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    pub kind: Kind,
    pub key: Key,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.gvk().2, self.key)
    }
}

/// Whether an owner reference's target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    Exists,
    Missing,
}

/// What to do about a dependent's owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Every owner is gone: delete the dependent.
    Delete,
    /// Some owners are gone: remove the references with these uids.
    RemoveReferences(Vec<String>),
}

/// Decide about a dependent from the state of each of its owner references (pure).
pub fn decide(owners: &[(String, OwnerState)]) -> Decision {
    if owners.is_empty() {
        return Decision::Nothing;
    }
    let missing: Vec<String> = owners
        .iter()
        .filter(|(_, s)| *s == OwnerState::Missing)
        .map(|(uid, _)| uid.clone())
        .collect();
    if missing.len() == owners.len() {
        Decision::Delete
    } else if missing.is_empty() {
        Decision::Nothing
    } else {
        Decision::RemoveReferences(missing)
    }
}

/// Whether a dependent still blocks its owner's foreground deletion.
pub fn blocks(dependent: &ObjectMeta, owner_uid: &str) -> bool {
    dependent
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true))
}

fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

struct Collector {
    shared: Arc<Shared>,
}

/// Apply `f` to the informer of `kind`.
macro_rules! with_informer {
    ($shared:expr, $kind:expr, |$inf:ident| $body:expr) => {
        match $kind {
            Kind::Pod => {
                let $inf = &$shared.pods;
                $body
            }
            Kind::ReplicationController => {
                let $inf = &$shared.rcs;
                $body
            }
            Kind::ReplicaSet => {
                let $inf = &$shared.rss;
                $body
            }
            Kind::Deployment => {
                let $inf = &$shared.deployments;
                $body
            }
            Kind::Service => {
                let $inf = &$shared.services;
                $body
            }
            Kind::EndpointSlice => {
                let $inf = &$shared.slices;
                $body
            }
            Kind::Job => {
                let $inf = &$shared.jobs;
                $body
            }
            Kind::CronJob => {
                let $inf = &$shared.cronjobs;
                $body
            }
            Kind::DaemonSet => {
                let $inf = &$shared.daemonsets;
                $body
            }
            Kind::StatefulSet => {
                let $inf = &$shared.statefulsets;
                $body
            }
            Kind::PersistentVolumeClaim => {
                let $inf = &$shared.pvcs;
                $body
            }
            Kind::ControllerRevision => {
                let $inf = &$shared.revisions;
                $body
            }
        }
    };
}

fn metas_in<
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + Sync + 'static,
>(
    inf: &Informer<K>,
    ns: &str,
) -> Vec<ObjectMeta> {
    inf.list_namespace(ns)
        .iter()
        .map(|o| o.meta().clone())
        .collect()
}

impl Collector {
    fn meta(&self, item: &Item) -> Option<ObjectMeta> {
        with_informer!(self.shared, item.kind, |inf| inf
            .get(&item.key)
            .map(|o| kube::Resource::meta(o.as_ref()).clone()))
    }

    /// Every known object of the namespace that lists `owner_uid` as an owner.
    fn dependents(&self, ns: &str, owner_uid: &str) -> Vec<(Kind, ObjectMeta)> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let metas = with_informer!(self.shared, kind, |inf| metas_in(inf, ns));
            for m in metas {
                if m.owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == owner_uid)
                {
                    out.push((kind, m));
                }
            }
        }
        out
    }

    fn api(&self, kind: Kind, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.shared.client.clone(), ns, &kind.resource())
    }

    async fn owner_state(&self, ns: &str, r: &OwnerReference) -> anyhow::Result<OwnerState> {
        let Some(kind) = Kind::of_reference(r) else {
            return Ok(OwnerState::Exists);
        };
        let key = Key::new(ns, r.name.clone());
        let cached = with_informer!(self.shared, kind, |inf| inf
            .get(&key)
            .map(|o| kube::Resource::meta(o.as_ref()).uid.clone()));
        if cached.flatten().as_deref() == Some(r.uid.as_str()) {
            return Ok(OwnerState::Exists);
        }
        // Not in the cache (or another uid): ask the server before deleting anything.
        let live = self.api(kind, ns).get_opt(&r.name).await?;
        Ok(match live {
            Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => OwnerState::Exists,
            _ => OwnerState::Missing,
        })
    }

    async fn sync(&self, item: &Item) -> anyhow::Result<Option<Duration>> {
        let Some(meta) = self.meta(item) else {
            return Ok(None);
        };
        let ns = item.key.namespace.clone();
        let uid = meta.uid.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            if has_finalizer(&meta, ORPHAN) {
                for (kind, dep) in self.dependents(&ns, &uid) {
                    self.remove_references(kind, &ns, &dep, std::slice::from_ref(&uid))
                        .await?;
                }
                self.remove_finalizer(item, ORPHAN).await?;
                return Ok(None);
            }
            if has_finalizer(&meta, FOREGROUND) {
                let dependents = self.dependents(&ns, &uid);
                for (kind, dep) in &dependents {
                    if dep.deletion_timestamp.is_none() {
                        let policy = if kind.owns_things() {
                            PropagationPolicy::Foreground
                        } else {
                            PropagationPolicy::Background
                        };
                        self.delete(*kind, &ns, dep, policy).await?;
                    }
                }
                if !dependents.iter().any(|(_, d)| blocks(d, &uid)) {
                    self.remove_finalizer(item, FOREGROUND).await?;
                }
                return Ok(None);
            }
        }
        let refs = meta.owner_references.clone().unwrap_or_default();
        let mut states = Vec::new();
        for r in &refs {
            states.push((r.uid.clone(), self.owner_state(&ns, r).await?));
        }
        match decide(&states) {
            Decision::Nothing => {}
            Decision::Delete => {
                if meta.deletion_timestamp.is_none() {
                    tracing::info!(object = %item, "owner is gone: deleting");
                    self.delete(item.kind, &ns, &meta, PropagationPolicy::Background)
                        .await?;
                }
            }
            Decision::RemoveReferences(uids) => {
                self.remove_references(item.kind, &ns, &meta, &uids).await?;
            }
        }
        Ok(None)
    }

    async fn delete(
        &self,
        kind: Kind,
        ns: &str,
        meta: &ObjectMeta,
        policy: PropagationPolicy,
    ) -> anyhow::Result<()> {
        let name = meta.name.clone().unwrap_or_default();
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: meta.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api(kind, ns).delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => anyhow::bail!("delete {} {ns}/{name}: {e}", kind.gvk().2),
        }
    }

    async fn remove_references(
        &self,
        kind: Kind,
        ns: &str,
        meta: &ObjectMeta,
        uids: &[String],
    ) -> anyhow::Result<()> {
        let name = meta.name.clone().unwrap_or_default();
        let deletes: Vec<serde_json::Value> = uids
            .iter()
            .map(|u| serde_json::json!({"$patch": "delete", "uid": u}))
            .collect();
        let patch = serde_json::json!({"metadata": {"ownerReferences": deletes, "uid": meta.uid}});
        match self
            .api(kind, ns)
            .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => Ok(()),
            Err(e) => anyhow::bail!(
                "remove owner references from {} {ns}/{name}: {e}",
                kind.gvk().2
            ),
        }
    }

    /// Remove one finalizer, re-reading the object on conflicts.
    async fn remove_finalizer(&self, item: &Item, finalizer: &str) -> anyhow::Result<()> {
        let api = self.api(item.kind, &item.key.namespace);
        for _ in 0..5 {
            let Some(obj) = api.get_opt(&item.key.name).await? else {
                return Ok(());
            };
            let remaining: Vec<String> = obj
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != finalizer)
                .collect();
            if Some(remaining.len()) == obj.metadata.finalizers.as_ref().map(Vec::len) {
                return Ok(());
            }
            let patch = serde_json::json!({"metadata": {
                "finalizers": remaining, "resourceVersion": obj.metadata.resource_version}});
            match api
                .patch(
                    &item.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(object = %item, finalizer, "finalizer removed");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => anyhow::bail!("remove finalizer {finalizer} from {item}: {e}"),
            }
        }
        anyhow::bail!("remove finalizer {finalizer} from {item}: the object kept changing")
    }
}

/// Register the handlers now; the future collects garbage forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue<Item> = WorkQueue::new();
    for kind in Kind::ALL {
        let q = queue.clone();
        let s = Arc::downgrade(&shared);
        with_informer!(shared, kind, |inf| inf.on_change(move |change| {
            let Some(shared) = s.upgrade() else { return };
            match change {
                Change::Applied { new, .. } => {
                    let meta = kube::Resource::meta(*new);
                    let owned = meta
                        .owner_references
                        .as_ref()
                        .is_some_and(|r| !r.is_empty());
                    let finalizing = meta.deletion_timestamp.is_some()
                        && (has_finalizer(meta, ORPHAN) || has_finalizer(meta, FOREGROUND));
                    if owned || finalizing {
                        q.add(Item {
                            kind,
                            key: Key::of(*new),
                        });
                    }
                }
                Change::Deleted(old) => {
                    let meta = kube::Resource::meta(*old);
                    let ns = meta.namespace.clone().unwrap_or_default();
                    // Its dependents may now be dangling ...
                    let collector = Collector {
                        shared: shared.clone(),
                    };
                    let uid = meta.uid.clone().unwrap_or_default();
                    let mut items = BTreeSet::new();
                    for (k, dep) in collector.dependents(&ns, &uid) {
                        items.insert(Item {
                            kind: k,
                            key: Key::new(ns.clone(), dep.name.clone().unwrap_or_default()),
                        });
                    }
                    // ... and owners deleting in foreground may be done waiting.
                    for r in meta.owner_references.iter().flatten() {
                        if let Some(k) = Kind::of_reference(r) {
                            items.insert(Item {
                                kind: k,
                                key: Key::new(ns.clone(), r.name.clone()),
                            });
                        }
                    }
                    for item in items {
                        q.add(item);
                    }
                }
            }
        }));
    }
    async move {
        shared.synced().await;
        let collector = Arc::new(Collector { shared });
        run_worker("garbage-collector", queue, move |item| {
            let c = collector.clone();
            async move { c.sync(&item).await }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use OwnerState::*;
        assert_eq!(decide(&[]), Decision::Nothing);
        assert_eq!(decide(&[("a".into(), Exists)]), Decision::Nothing);
        assert_eq!(decide(&[("a".into(), Missing)]), Decision::Delete);
        assert_eq!(
            decide(&[("a".into(), Missing), ("b".into(), Exists)]),
            Decision::RemoveReferences(vec!["a".into()])
        );
        let r = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-5869d7778c".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        assert_eq!(Kind::of_reference(&r), Some(Kind::ReplicaSet));
        let meta = ObjectMeta {
            owner_references: Some(vec![r.clone()]),
            ..Default::default()
        };
        assert!(blocks(&meta, "u"));
        assert!(!blocks(&meta, "other"));
        let foreign = OwnerReference {
            kind: "Widget".into(),
            ..r
        };
        assert_eq!(Kind::of_reference(&foreign), None);
    }
}
