//! The object registry: every live object in memory, one global resourceVersion counter, the
//! watch fan-out and the durable [`Store`] underneath.
//!
//! All mutations run inside [`Registry::txn`] under one lock: the closure reads current objects,
//! checks preconditions (resourceVersion, uid), allocates, and writes; each write is persisted
//! before it becomes visible, gets the next resourceVersion and is broadcast to watchers while the
//! lock is held, so watchers see changes in resourceVersion order with no gaps. A bounded ring of
//! recent events per resource lets a watch resume from an older resourceVersion; older than the
//! ring means 410 Expired, and clients relist.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::alloc::Allocators;
use super::object::{Stored, meta_mut};
use super::resources::RESOURCES;
use super::status::{ApiError, ApiResult};
use super::store::{Mutation, Store, object_key};

/// ADDED / MODIFIED / DELETED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, shared by every watcher. Encodings are computed once, on first use.
#[derive(Debug)]
pub struct WatchEvent {
    pub kind: EventType,
    /// The object after the change (the last state, for DELETED).
    pub obj: Arc<Stored>,
    /// The object before the change (MODIFIED and DELETED): watchers with selectors turn a
    /// change that leaves or enters their selection into DELETED or ADDED, and paginated lists
    /// rebuild an earlier state from it.
    pub prev: Option<Arc<Stored>>,
    /// `{"type":...,"object":...}\n` for `kind`.
    pub json_line: OnceLock<Bytes>,
    /// The same as a one-row Table (default `includeObject`).
    pub table_line: OnceLock<Bytes>,
}

impl WatchEvent {
    fn new(kind: EventType, obj: Arc<Stored>, prev: Option<Arc<Stored>>) -> Arc<Self> {
        Arc::new(WatchEvent {
            kind,
            obj,
            prev,
            json_line: OnceLock::new(),
            table_line: OnceLock::new(),
        })
    }
}

/// Where a watch starts.
#[derive(Debug)]
pub enum WatchStart {
    /// Current objects (to send as synthetic ADDED), then live changes.
    Snapshot(Vec<Arc<Stored>>),
    /// Retained events newer than the requested resourceVersion, then live changes.
    Replay(Vec<Arc<WatchEvent>>),
}

type Objects = BTreeMap<(String, String), Arc<Stored>>;

struct Inner {
    rv: u64,
    objects: Vec<Objects>,
    history: Vec<VecDeque<Arc<WatchEvent>>>,
    /// Per resource: watches must start at or after this resourceVersion.
    horizon: Vec<u64>,
    history_limit: usize,
    store: Box<dyn Store>,
    alloc: Allocators,
    rng: ChaCha8Rng,
    /// A stream of its own for ClusterIPs and NodePorts: with a seed, allocations repeat from
    /// run to run however many other objects (events, leases) got uids in between.
    alloc_rng: ChaCha8Rng,
}

/// The in-memory state of the server.
pub struct Registry {
    inner: Mutex<Inner>,
    senders: Vec<broadcast::Sender<Arc<WatchEvent>>>,
    /// The current resourceVersion, for reads that wait for one ([`Registry::wait_for_rv`]).
    rv: watch::Sender<u64>,
}

/// Capacity of each resource's broadcast channel; a watcher further behind is closed with 410.
const CHANNEL_CAPACITY: usize = 16 * 1024;

impl Registry {
    /// Load `store` and build the registry. `history_limit` is the ring size per resource.
    pub fn open(
        mut store: Box<dyn Store>,
        alloc: Allocators,
        mut rng: ChaCha8Rng,
        history_limit: usize,
    ) -> anyhow::Result<Registry> {
        let loaded = store.load()?;
        let mut objects: Vec<Objects> = RESOURCES.iter().map(|_| Objects::new()).collect();
        for (resource, json) in loaded.objects {
            let Some(idx) = RESOURCES.iter().position(|r| r.qualified() == resource) else {
                tracing::warn!("ignoring stored object of unknown resource {resource}");
                continue;
            };
            let value: Value = serde_json::from_slice(&json)?;
            let rv = value
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(loaded.rv);
            let stored = Stored::with_json(&RESOURCES[idx], &value, Bytes::from(json), rv);
            objects[idx].insert(
                (stored.namespace.to_string(), stored.name.to_string()),
                Arc::new(stored),
            );
        }
        let inner = Inner {
            rv: loaded.rv,
            history: RESOURCES.iter().map(|_| VecDeque::new()).collect(),
            horizon: RESOURCES.iter().map(|_| loaded.rv).collect(),
            objects,
            history_limit: history_limit.max(1),
            store,
            alloc,
            alloc_rng: rand::SeedableRng::from_rng(&mut rng),
            rng,
        };
        let senders = RESOURCES
            .iter()
            .map(|_| broadcast::channel(CHANNEL_CAPACITY).0)
            .collect();
        Ok(Registry {
            rv: watch::Sender::new(inner.rv),
            inner: Mutex::new(inner),
            senders,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current (highest) resourceVersion.
    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, rt: usize, namespace: &str, name: &str) -> Option<Arc<Stored>> {
        self.lock().objects[rt]
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Objects of `rt` (in `namespace` if given) and the resourceVersion of the list.
    pub fn list(&self, rt: usize, namespace: Option<&str>) -> (Vec<Arc<Stored>>, u64) {
        let inner = self.lock();
        (list_in(&inner.objects[rt], namespace), inner.rv)
    }

    /// Objects of `rt` (in `namespace` if given) as they were at resourceVersion `rv`: the
    /// current ones with the retained changes after `rv` undone, for the later pages of a
    /// paginated list. `None` when changes after `rv` have left the history (etcd's
    /// compaction, for kube-apiserver).
    pub fn list_at(&self, rt: usize, namespace: Option<&str>, rv: u64) -> Option<Vec<Arc<Stored>>> {
        let inner = self.lock();
        if rv < inner.horizon[rt] || rv > inner.rv {
            return None;
        }
        let mut objects: Objects = list_in(&inner.objects[rt], namespace)
            .into_iter()
            .map(|o| ((o.namespace.to_string(), o.name.to_string()), o))
            .collect();
        for ev in inner.history[rt]
            .iter()
            .rev()
            .take_while(|ev| ev.obj.rv > rv)
        {
            if namespace.is_some_and(|ns| *ev.obj.namespace != *ns) {
                continue;
            }
            let key = (ev.obj.namespace.to_string(), ev.obj.name.to_string());
            match (&ev.kind, &ev.prev) {
                (EventType::Added, _) => {
                    objects.remove(&key);
                }
                (_, Some(prev)) => {
                    objects.insert(key, prev.clone());
                }
                // Every MODIFIED and DELETED event has it; without it the state is unknown.
                (_, None) => return None,
            }
        }
        Some(objects.into_values().collect())
    }

    /// Run `f` atomically against the registry.
    pub fn txn<T>(&self, f: impl FnOnce(&mut Txn<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let mut inner = self.lock();
        let mut txn = Txn {
            inner: &mut inner,
            senders: &self.senders,
        };
        let out = f(&mut txn);
        self.rv
            .send_if_modified(|rv| std::mem::replace(rv, inner.rv) != inner.rv);
        if inner.store.wants_compaction() {
            let Inner {
                objects, store, rv, ..
            } = &mut *inner;
            let names: Vec<String> = RESOURCES.iter().map(|rt| rt.qualified()).collect();
            let mut all = names
                .iter()
                .zip(objects.iter())
                .flat_map(|(name, objs)| objs.values().map(move |o| (name.as_str(), &o.json[..])));
            if let Err(e) = store.compact(*rv, &mut all) {
                tracing::error!("compacting the store failed: {e}");
            }
        }
        out
    }

    /// Wait up to `timeout` for the registry to reach resourceVersion `rv`, like the watch
    /// cache's `waitUntilFreshAndBlock`; if it does not, "Too large resource version" (504)
    /// with a hint to retry in `retry_after_seconds`.
    pub async fn wait_for_rv(
        &self,
        rv: u64,
        timeout: Duration,
        retry_after_seconds: u64,
    ) -> ApiResult<()> {
        let mut current = self.rv.subscribe();
        let reached = tokio::time::timeout(timeout, current.wait_for(|now| *now >= rv))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            return Ok(());
        }
        Err(ApiError::too_large_resource_version(
            rv,
            *current.borrow(),
            retry_after_seconds,
        ))
    }

    /// Start a watch on `rt`: from now (with the current objects) or after resourceVersion `since`.
    pub fn watch(
        &self,
        rt: usize,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> ApiResult<(WatchStart, broadcast::Receiver<Arc<WatchEvent>>, u64)> {
        let inner = self.lock();
        let rx = self.senders[rt].subscribe();
        let start = match since {
            None => WatchStart::Snapshot(list_in(&inner.objects[rt], namespace)),
            Some(rv) if rv < inner.horizon[rt] => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    inner.horizon[rt]
                )));
            }
            Some(rv) => WatchStart::Replay(
                inner.history[rt]
                    .iter()
                    .filter(|e| e.obj.rv > rv)
                    .cloned()
                    .collect(),
            ),
        };
        Ok((start, rx, inner.rv))
    }
}

fn list_in(objects: &Objects, namespace: Option<&str>) -> Vec<Arc<Stored>> {
    match namespace {
        None => objects.values().cloned().collect(),
        Some(ns) => objects
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

/// The view of the registry inside [`Registry::txn`].
pub struct Txn<'a> {
    inner: &'a mut Inner,
    senders: &'a [broadcast::Sender<Arc<WatchEvent>>],
}

impl Txn<'_> {
    pub fn rv(&self) -> u64 {
        self.inner.rv
    }

    pub fn get(&self, rt: usize, namespace: &str, name: &str) -> Option<Arc<Stored>> {
        self.inner.objects[rt]
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, rt: usize, namespace: Option<&str>) -> Vec<Arc<Stored>> {
        list_in(&self.inner.objects[rt], namespace)
    }

    pub fn alloc(&mut self) -> &mut Allocators {
        &mut self.inner.alloc
    }

    /// Allocators and RNG together (allocation needs both).
    pub fn alloc_rng(&mut self) -> (&mut Allocators, &mut ChaCha8Rng) {
        (&mut self.inner.alloc, &mut self.inner.alloc_rng)
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.inner.rng
    }

    /// Create or replace an object: next resourceVersion, persisted, indexed, broadcast.
    pub fn put(&mut self, rt: usize, mut obj: Value) -> ApiResult<Arc<Stored>> {
        let rv = self.inner.rv + 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let stored = Arc::new(Stored::new(&RESOURCES[rt], &obj, rv));
        self.inner
            .store
            .append(Mutation::Put {
                rv,
                resource: &RESOURCES[rt].qualified(),
                json: &stored.json,
            })
            .map_err(|e| ApiError::internal(format!("persisting {}: {e}", RESOURCES[rt].plural)))?;
        self.inner.rv = rv;
        let key = (stored.namespace.to_string(), stored.name.to_string());
        let prev = self.inner.objects[rt].insert(key, stored.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.publish(rt, WatchEvent::new(kind, stored.clone(), prev));
        Ok(stored)
    }

    /// Remove an object; the DELETED event carries its last state at the new resourceVersion.
    pub fn delete(
        &mut self,
        rt: usize,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Arc<Stored>>> {
        let key = (namespace.to_string(), name.to_string());
        let Some(current) = self.inner.objects[rt].get(&key).cloned() else {
            return Ok(None);
        };
        let rv = self.inner.rv + 1;
        self.inner
            .store
            .append(Mutation::Delete {
                rv,
                resource: &RESOURCES[rt].qualified(),
                key: &object_key(namespace, name),
            })
            .map_err(|e| ApiError::internal(format!("persisting {}: {e}", RESOURCES[rt].plural)))?;
        self.inner.rv = rv;
        self.inner.objects[rt].remove(&key);
        let mut last = current.value();
        meta_mut(&mut last).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let last = Arc::new(Stored::new(&RESOURCES[rt], &last, rv));
        self.publish(
            rt,
            WatchEvent::new(EventType::Deleted, last.clone(), Some(current)),
        );
        Ok(Some(last))
    }

    fn publish(&mut self, rt: usize, event: Arc<WatchEvent>) {
        let history = &mut self.inner.history[rt];
        if history.len() >= self.inner.history_limit
            && let Some(old) = history.pop_front()
        {
            self.inner.horizon[rt] = old.obj.rv;
        }
        history.push_back(event.clone());
        // No receivers is fine.
        let _ = self.senders[rt].send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::alloc::{IpAllocator, PortAllocator};
    use crate::api::resources::id;
    use crate::api::store::memory::MemoryStore;
    use rand::SeedableRng;
    use serde_json::json;

    pub fn registry(history: usize) -> Registry {
        let alloc = Allocators {
            ips: IpAllocator::new("10.0.0.0/24".parse().unwrap()),
            ports: PortAllocator::new(30000, 32767),
        };
        Registry::open(
            Box::new(MemoryStore),
            alloc,
            ChaCha8Rng::seed_from_u64(1),
            history,
        )
        .unwrap()
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}})
    }

    #[tokio::test]
    async fn reads_wait_for_a_resource_version_then_time_out() {
        let reg = Arc::new(registry(10));
        reg.txn(|t| t.put(id::PODS, pod("a"))).unwrap();
        // Reached while waiting: served.
        let waiter = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.wait_for_rv(2, Duration::from_secs(3), 1).await })
        };
        tokio::task::yield_now().await;
        reg.txn(|t| t.put(id::PODS, pod("b"))).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Already reached: served at once.
        assert_eq!(reg.wait_for_rv(1, Duration::ZERO, 1).await, Ok(()));
        // Never reached: the timeout error, with the version the registry is at.
        let e = reg
            .wait_for_rv(9, Duration::from_millis(10), 1)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                504,
                "Timeout",
                "Timeout: Too large resource version: 9, current: 2"
            )
        );
        assert_eq!(
            e.details,
            Some(
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1})
            )
        );
        assert_eq!(e.retry_after_seconds(), Some(1));
    }

    #[test]
    fn earlier_states_are_rebuilt_from_the_history() {
        let reg = registry(4);
        let labelled = |name: &str, v: &str| json!({"metadata": {"name": name, "namespace": "default", "labels": {"v": v}}});
        reg.txn(|t| t.put(id::PODS, labelled("a", "1"))).unwrap();
        reg.txn(|t| t.put(id::PODS, labelled("b", "1"))).unwrap();
        reg.txn(|t| {
            t.put(
                id::PODS,
                json!({"metadata": {"name": "x", "namespace": "other"}}),
            )
        })
        .unwrap();
        let at = reg.rv();
        reg.txn(|t| t.put(id::PODS, labelled("a", "2"))).unwrap();
        reg.txn(|t| t.delete(id::PODS, "default", "b")).unwrap();
        reg.txn(|t| t.put(id::PODS, labelled("c", "1"))).unwrap();
        let then = |ns| {
            reg.list_at(id::PODS, ns, at)
                .unwrap()
                .iter()
                .map(|o| format!("{}/{}@{}", o.name, o.label("v").unwrap_or("-"), o.rv))
                .collect::<Vec<_>>()
        };
        assert_eq!(then(Some("default")), ["a/1@1", "b/1@2"]);
        assert_eq!(then(None), ["a/1@1", "b/1@2", "x/-@3"]);
        assert_eq!(reg.list_at(id::PODS, None, reg.rv()).unwrap().len(), 3);
        // A ring of 4 has forgotten event 2: the state at 1 cannot be rebuilt.
        assert!(reg.list_at(id::PODS, None, 2).is_some());
        assert!(reg.list_at(id::PODS, None, 1).is_none());
        assert!(reg.list_at(id::PODS, None, reg.rv() + 1).is_none());
    }

    #[test]
    fn rv_increases_and_history_expires() {
        let reg = registry(2);
        let (_, mut rx, _) = reg.watch(id::PODS, None, None).unwrap();
        for n in ["a", "b", "c"] {
            reg.txn(|t| t.put(id::PODS, pod(n))).unwrap();
        }
        assert_eq!(reg.rv(), 3);
        assert_eq!(rx.try_recv().unwrap().obj.name.as_ref(), "a");
        // Ring of 2: events 2 and 3 are kept, so a watch from 1 works and from 0 is too old.
        assert!(
            matches!(reg.watch(id::PODS, None, Some(1)).unwrap().0, WatchStart::Replay(e) if e.len() == 2)
        );
        assert_eq!(reg.watch(id::PODS, None, Some(0)).unwrap_err().code, 410);
        let gone = reg
            .txn(|t| t.delete(id::PODS, "default", "a"))
            .unwrap()
            .unwrap();
        assert_eq!(gone.rv, 4);
        assert_eq!(reg.list(id::PODS, Some("default")).0.len(), 2);
        assert_eq!(reg.list(id::PODS, Some("other")).0.len(), 0);
    }
}
