//! The agent's view of one watched resource: a map of live objects kept from kube-rs watcher
//! events. A relist (`Init` … `InitDone`) is collected aside and swapped in whole, so a sync
//! never sees half a list; managed fields are dropped to keep the agent small.

use std::collections::BTreeMap;

use kube::Resource;
use kube::runtime::watcher::Event;

/// Live objects by `namespace/name`.
pub struct Cache<K> {
    live: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    /// A first complete list has arrived.
    pub ready: bool,
    /// Highest resourceVersion seen (numeric versions only).
    pub max_version: u64,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            live: BTreeMap::new(),
            relist: None,
            ready: false,
            max_version: 0,
        }
    }
}

fn key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

impl<K: Resource + Clone> Cache<K> {
    fn note_version(&mut self, obj: &K) {
        if let Some(v) = obj
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.max_version = self.max_version.max(v);
        }
    }

    fn slim(mut obj: K) -> K {
        obj.meta_mut().managed_fields = None;
        obj
    }

    /// Apply one event; true when the live set may have changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                self.note_version(&obj);
                let obj = Self::slim(obj);
                match &mut self.relist {
                    Some(list) => {
                        list.insert(key(&obj), obj);
                        false
                    }
                    None => {
                        self.live.insert(key(&obj), obj);
                        true
                    }
                }
            }
            Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.live = list;
                }
                self.ready = true;
                true
            }
            Event::Apply(obj) => {
                self.note_version(&obj);
                let obj = Self::slim(obj);
                self.live.insert(key(&obj), obj);
                true
            }
            Event::Delete(obj) => {
                self.note_version(&obj);
                self.live.remove(&key(&obj)).is_some()
            }
        }
    }

    /// The live objects, in key order.
    /// The live objects, by key.
    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.live.values()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(name: &str, rv: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn a_relist_is_swapped_in_whole() {
        let mut cache: Cache<Service> = Cache::default();
        assert!(!cache.apply(Event::Init));
        assert!(!cache.apply(Event::InitApply(svc("a", "3"))));
        assert!(!cache.ready && cache.is_empty());
        assert!(cache.apply(Event::InitDone));
        assert!(cache.ready && cache.len() == 1);
        assert!(cache.apply(Event::Apply(svc("b", "7"))));
        // A relist without "a": until InitDone the old set stays visible.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(svc("b", "7")));
        assert_eq!(cache.len(), 2);
        cache.apply(Event::InitDone);
        let names: Vec<String> = cache
            .objects()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, vec!["b"]);
        assert!(cache.apply(Event::Delete(svc("b", "9"))));
        assert!(cache.is_empty());
        assert_eq!(cache.max_version, 9);
    }
}
