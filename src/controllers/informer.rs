//! Informers: one list+watch per resource type, a local cache of the objects, and handlers that
//! turn changes into work-queue keys. Scheduler and controllers read the cache, never the API
//! server, so a sync costs no request (client-go's shared informers, reduced to what kemu uses).
//!
//! The cache is also *written through*: after a successful create, update or delete a controller
//! may put the server's answer into its cache ([`Informer::observe`], [`Informer::observe_deleted`]),
//! so its next sync sees its own writes even before the watch delivers them. A re-list can still
//! take such a write back out for a moment (a list served just before the write), so the
//! replication controllers do not rely on it for their pods: they count what they asked for in
//! [`super::expectations`]. Newer resourceVersions win; a uid seen deleted is ignored until its
//! DELETED event arrives.
//!
//! After any watch error the informer lists again (with a short back-off) and records when that
//! list arrived ([`Informer::fresh_since`]): until then its view has a hole of unknown length, and
//! a controller that judges by time (the node lifecycle controller) must not read the silence of
//! its own broken watch as silence of the objects.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// `namespace/name` (namespace empty for cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object.
    pub fn of<K: Resource>(obj: &K) -> Key {
        Key::new(
            obj.meta().namespace.clone().unwrap_or_default(),
            obj.meta().name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One change seen by an informer.
pub enum Change<'a, K> {
    /// Added or modified; `old` is the previous cached version.
    Applied { old: Option<&'a K>, new: &'a K },
    /// Removed (the last known version).
    Deleted(&'a K),
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;

struct State<K> {
    objects: BTreeMap<Key, Arc<K>>,
    /// Uids this process deleted and whose DELETED event has not arrived yet.
    deleted: HashSet<String>,
    ready: bool,
    /// When the current list arrived; `None` before the first list and after a watch error.
    fresh_since: Option<Instant>,
}

/// First delay before listing again after a watch error; doubled up to [`MAX_RELIST_DELAY`].
const FIRST_RELIST_DELAY: Duration = Duration::from_millis(100);
const MAX_RELIST_DELAY: Duration = Duration::from_secs(2);

/// A watch-fed cache of one resource type. Cheap to clone.
pub struct Informer<K> {
    state: Arc<Mutex<State<K>>>,
    handlers: Arc<Mutex<Vec<Arc<Handler<K>>>>>,
    ready: Arc<tokio::sync::Notify>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            state: self.state.clone(),
            handlers: self.handlers.clone(),
            ready: self.ready.clone(),
        }
    }
}

fn rv_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

fn uid_of<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    /// An empty informer; [`Informer::start`] feeds it from a watch.
    pub fn new() -> Informer<K> {
        Informer {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                deleted: HashSet::new(),
                ready: false,
                fresh_since: None,
            })),
            handlers: Arc::new(Mutex::new(Vec::new())),
            ready: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// List and watch `api` in a background task, listing again after every error.
    pub fn start(&self, api: Api<K>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = FIRST_RELIST_DELAY;
            loop {
                if this.list_and_watch(&api).await {
                    delay = FIRST_RELIST_DELAY;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RELIST_DELAY);
            }
        });
    }

    /// One list and the watch that follows it, until the first error (the watcher resumes a
    /// watch silently, so it is dropped to make the next view start with a list). Whether the
    /// list got through.
    async fn list_and_watch(&self, api: &Api<K>) -> bool {
        let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
        let mut fresh: Option<BTreeMap<Key, Arc<K>>> = None;
        let mut listed = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => fresh = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(obj)) => {
                    if let Some(f) = fresh.as_mut() {
                        f.insert(Key::of(&obj), Arc::new(obj));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(f) = fresh.take() {
                        self.replace(f);
                        listed = true;
                    }
                }
                Ok(watcher::Event::Apply(obj)) => self.apply(obj, false),
                Ok(watcher::Event::Delete(obj)) => self.remove(obj, true),
                Err(e) => {
                    tracing::warn!(kind = std::any::type_name::<K>(), "watch: {e}");
                    break;
                }
            }
        }
        self.mark_broken();
        listed
    }

    fn mark_broken(&self) {
        self.state.lock().expect("informer lock").fresh_since = None;
    }

    /// When the cached view was last listed whole; `None` while the watch is broken (or before
    /// the first list): changes may be missing since some unknown time.
    pub fn fresh_since(&self) -> Option<Instant> {
        self.state.lock().expect("informer lock").fresh_since
    }

    /// Call `handler` for every later change (and for the initial list).
    pub fn on_change(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.handlers
            .lock()
            .expect("handlers lock")
            .push(Arc::new(Box::new(handler)));
    }

    /// Wait until the initial list has been loaded.
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.state.lock().expect("informer lock").ready {
                return;
            }
            notified.await;
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<K>> {
        self.state
            .lock()
            .expect("informer lock")
            .objects
            .get(key)
            .cloned()
    }

    /// Every cached object, in key order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.state
            .lock()
            .expect("informer lock")
            .objects
            .values()
            .cloned()
            .collect()
    }

    /// The cached objects of one namespace, in name order.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let state = self.state.lock().expect("informer lock");
        let from = Key::new(namespace, "");
        state
            .objects
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Put the server's answer to our own write into the cache.
    pub fn observe(&self, obj: K) {
        self.apply(obj, true);
    }

    /// Record that we deleted `obj` (the object is gone from the server).
    pub fn observe_deleted(&self, obj: &K) {
        self.remove(obj.clone(), false);
    }

    fn notify(&self, changes: &[Change<'_, K>]) {
        if changes.is_empty() {
            return;
        }
        let handlers: Vec<_> = self.handlers.lock().expect("handlers lock").clone();
        for change in changes {
            for h in &handlers {
                h(change);
            }
        }
    }

    fn apply(&self, obj: K, local: bool) {
        let key = Key::of(&obj);
        let (old, new) = {
            let mut state = self.state.lock().expect("informer lock");
            if state.deleted.contains(&uid_of(&obj)) {
                return;
            }
            let old = state.objects.get(&key).cloned();
            if let Some(old) = &old
                && uid_of(old.as_ref()) == uid_of(&obj)
                && let (Some(a), Some(b)) = (rv_of(old.as_ref()), rv_of(&obj))
                && (b < a || (local && b == a))
            {
                return;
            }
            let new = Arc::new(obj);
            state.objects.insert(key, new.clone());
            (old, new)
        };
        self.notify(&[Change::Applied {
            old: old.as_deref(),
            new: &new,
        }]);
    }

    fn remove(&self, obj: K, from_watch: bool) {
        let key = Key::of(&obj);
        let uid = uid_of(&obj);
        let removed = {
            let mut state = self.state.lock().expect("informer lock");
            if from_watch {
                state.deleted.remove(&uid);
            } else {
                state.deleted.insert(uid.clone());
            }
            match state.objects.get(&key) {
                Some(cur) if uid_of(cur.as_ref()) == uid || uid.is_empty() => {
                    state.objects.remove(&key)
                }
                _ => None,
            }
        };
        if let Some(last) = removed {
            self.notify(&[Change::Deleted(&last)]);
        }
    }

    fn replace(&self, fresh: BTreeMap<Key, Arc<K>>) {
        let (old, fresh) = {
            let mut state = self.state.lock().expect("informer lock");
            let listed: HashSet<String> = fresh.values().map(|o| uid_of(o.as_ref())).collect();
            state.deleted.retain(|uid| listed.contains(uid));
            let deleted = state.deleted.clone();
            let fresh: BTreeMap<Key, Arc<K>> = fresh
                .into_iter()
                .filter(|(_, o)| !deleted.contains(&uid_of(o.as_ref())))
                .collect();
            let old = std::mem::replace(&mut state.objects, fresh.clone());
            state.ready = true;
            state.fresh_since = Some(Instant::now());
            (old, fresh)
        };
        let mut changes = Vec::new();
        for (key, last) in &old {
            if !fresh.contains_key(key) {
                changes.push(Change::Deleted(last.as_ref()));
            }
        }
        for (key, new) in &fresh {
            let before = old.get(key);
            if before.is_some_and(|b| b.resource_version() == new.resource_version()) {
                continue;
            }
            changes.push(Change::Applied {
                old: before.map(|b| b.as_ref()),
                new: new.as_ref(),
            });
        }
        self.notify(&changes);
        self.ready.notify_waiters();
    }
}

impl<K> Default for Informer<K>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pod(name: &str, uid: &str, rv: u64, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv.to_string()},
            "spec": {"containers": [], "nodeName": node}
        }))
        .unwrap()
    }

    #[test]
    fn newer_versions_win_and_own_deletions_stick() {
        let inf: Informer<Pod> = Informer::new();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        inf.on_change(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        });
        inf.replace(BTreeMap::from([(
            Key::new("default", "a"),
            Arc::new(pod("a", "u1", 5, "")),
        )]));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        // A local write (the scheduler's binding) is seen at once ...
        inf.observe(pod("a", "u1", 6, "n1"));
        // ... and an older watch event does not undo it.
        inf.apply(pod("a", "u1", 5, ""), false);
        let a = inf.get(&Key::new("default", "a")).unwrap();
        assert_eq!(a.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        // A pod we deleted stays gone even if a late MODIFIED arrives.
        inf.observe_deleted(&pod("a", "u1", 6, "n1"));
        inf.apply(pod("a", "u1", 7, "n1"), false);
        assert!(inf.get(&Key::new("default", "a")).is_none());
        // Its DELETED event clears the mark; a new pod with the same name is seen.
        inf.remove(pod("a", "u1", 8, "n1"), true);
        inf.apply(pod("a", "u2", 9, ""), false);
        assert!(inf.get(&Key::new("default", "a")).is_some());
        assert_eq!(inf.list_namespace("default").len(), 1);
        assert!(inf.list_namespace("other").is_empty());
    }

    #[test]
    fn the_view_is_fresh_from_a_list_until_the_watch_breaks() {
        let inf: Informer<Pod> = Informer::new();
        assert_eq!(inf.fresh_since(), None, "never listed");
        let before = Instant::now();
        inf.replace(BTreeMap::new());
        let first = inf.fresh_since().expect("listed");
        assert!(first >= before);
        // Watch events keep the view whole.
        inf.apply(pod("a", "u1", 5, ""), false);
        assert_eq!(inf.fresh_since(), Some(first));
        inf.mark_broken();
        assert_eq!(inf.fresh_since(), None, "a hole of unknown length");
        inf.replace(BTreeMap::new());
        assert!(inf.fresh_since().expect("listed again") >= first);
    }
}
