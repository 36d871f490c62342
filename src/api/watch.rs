//! Watch streams: one JSON event per line over a chunked response, kept open until the client
//! leaves or `timeoutSeconds` passes.
//!
//! Fan-out is a broadcast channel of `Arc<WatchEvent>` per resource. Each event is encoded once per
//! encoding (plain JSON line, one-row Table line) and the bytes are shared by every watcher; a
//! watcher only filters (namespace, selectors) and copies a reference. A watcher whose selection an
//! object enters or leaves sees ADDED or DELETED, like the real server's watch cache.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::object::Stored;
use super::registry::{EventType, WatchEvent, WatchStart};
use super::resources::RESOURCES;
use super::selectors::Selectors;
use super::status::ApiError;
use super::table::{self, IncludeObject};

/// What a watcher asked for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub rt: usize,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// `Some` when the client wants one-row Tables.
    pub table: Option<IncludeObject>,
    pub timeout: Option<Duration>,
    /// `sendInitialEvents=true`: end the initial ADDED events with a bookmark.
    pub initial_events_bookmark: bool,
}

impl WatchSpec {
    fn selects(&self, obj: &Stored) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| *obj.namespace == *ns)
            && self.selectors.matches(obj)
    }

    /// The event type this watcher sees for `ev`, if any.
    fn effective(&self, ev: &WatchEvent) -> Option<EventType> {
        let now = self.selects(&ev.obj);
        match ev.kind {
            EventType::Added | EventType::Deleted => now.then_some(ev.kind),
            EventType::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }

    fn encode_object(&self, kind: EventType, obj: &Stored) -> Bytes {
        match self.table {
            None => json_line(kind, &obj.json),
            Some(include) => table_line(self.rt, kind, obj, include),
        }
    }

    fn encode_event(&self, ev: &WatchEvent) -> Option<Bytes> {
        let kind = self.effective(ev)?;
        if kind != ev.kind {
            return Some(self.encode_object(kind, &ev.obj));
        }
        Some(match self.table {
            None => ev
                .json_line
                .get_or_init(|| json_line(kind, &ev.obj.json))
                .clone(),
            Some(IncludeObject::Metadata) => ev
                .table_line
                .get_or_init(|| table_line(self.rt, kind, &ev.obj, IncludeObject::Metadata))
                .clone(),
            Some(include) => table_line(self.rt, kind, &ev.obj, include),
        })
    }
}

fn json_line(kind: EventType, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn table_line(rt: usize, kind: EventType, obj: &Stored, include: IncludeObject) -> Bytes {
    let value = obj.value();
    let t = table::table(
        rt,
        [&value],
        include,
        &obj.rv.to_string(),
        jiff::Timestamp::now(),
    );
    let mut line =
        serde_json::to_vec(&json!({"type": kind.as_str(), "object": t})).expect("serialisable");
    line.push(b'\n');
    Bytes::from(line)
}

/// An ERROR event carrying `e`'s Status.
pub fn error_line(e: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
        .expect("serialisable");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(rt: usize, rv: u64, initial_events_end: bool) -> Bytes {
    let r = &RESOURCES[rt];
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": {
        "kind": r.kind, "apiVersion": r.api_version(), "metadata": metadata}}))
    .expect("serialisable");
    line.push(b'\n');
    Bytes::from(line)
}

struct State {
    spec: WatchSpec,
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    deadline: Option<Instant>,
    done: bool,
}

/// The body stream of a watch that starts at `start`, fed by `rx`; `rv` is the registry's
/// resourceVersion when the watch started.
pub fn stream(
    spec: WatchSpec,
    start: WatchStart,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    rv: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut pending = VecDeque::new();
    match start {
        WatchStart::Snapshot(objects) => {
            for obj in objects.iter().filter(|o| spec.selects(o)) {
                pending.push_back(spec.encode_object(EventType::Added, obj));
            }
            if spec.initial_events_bookmark {
                pending.push_back(bookmark_line(spec.rt, rv, true));
            }
        }
        WatchStart::Replay(events) => {
            pending.extend(events.iter().filter_map(|e| spec.encode_event(e)));
        }
    }
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let state = State {
        spec,
        pending,
        rx,
        deadline,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok(line), st));
            }
            if st.done {
                return None;
            }
            let next = async {
                match st.deadline {
                    Some(d) => tokio::time::timeout_at(d, st.rx.recv()).await.ok(),
                    None => Some(st.rx.recv().await),
                }
            };
            match next.await {
                None => return None,
                Some(Ok(ev)) => {
                    if let Some(line) = st.spec.encode_event(&ev) {
                        return Some((Ok(line), st));
                    }
                }
                Some(Err(broadcast::error::RecvError::Lagged(n))) => {
                    st.pending.push_back(error_line(&ApiError::expired(format!(
                        "the watcher fell {n} events behind; too old resource version"
                    ))));
                    st.done = true;
                }
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    })
}

/// A watch stream of one ERROR event, for a watch that cannot start (its resourceVersion is
/// too old, or newer than the registry): the client sees the Status, then the end.
pub fn error_stream(
    e: &ApiError,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::iter([Ok(error_line(e))])
}

/// Whether a JSON value is an object the watch would select (used by tests).
pub fn describe_line(line: &[u8]) -> String {
    let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
    format!(
        "{} {}",
        v["type"].as_str().unwrap_or_default(),
        v.pointer("/object/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::alloc::{Allocators, IpAllocator, PortAllocator};
    use crate::api::registry::Registry;
    use crate::api::resources::id;
    use crate::api::selectors::LabelSelector;
    use crate::api::store::memory::MemoryStore;
    use futures::StreamExt;
    use rand::SeedableRng;

    fn registry() -> Registry {
        let alloc = Allocators {
            ips: IpAllocator::new("10.0.0.0/24".parse().unwrap()),
            ports: PortAllocator::new(30000, 32767),
        };
        Registry::open(
            Box::new(MemoryStore),
            alloc,
            rand_chacha::ChaCha8Rng::seed_from_u64(1),
            100,
        )
        .unwrap()
    }

    fn pod(name: &str, app: &str) -> Value {
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": "default", "labels": {"app": app}}})
    }

    #[tokio::test]
    async fn selection_changes_become_added_and_deleted() {
        let reg = registry();
        reg.txn(|t| t.put(id::PODS, pod("a", "web"))).unwrap();
        let spec = WatchSpec {
            rt: id::PODS,
            namespace: Some("default".into()),
            selectors: Selectors {
                labels: LabelSelector::parse("app=web").unwrap(),
                ..Default::default()
            },
            table: None,
            timeout: Some(Duration::from_millis(200)),
            initial_events_bookmark: false,
        };
        let (start, rx, rv) = reg.watch(id::PODS, Some("default"), None).unwrap();
        let s = stream(spec, start, rx, rv);
        reg.txn(|t| t.put(id::PODS, pod("b", "db"))).unwrap();
        reg.txn(|t| t.put(id::PODS, pod("b", "web"))).unwrap();
        reg.txn(|t| t.put(id::PODS, pod("a", "db"))).unwrap();
        reg.txn(|t| t.delete(id::PODS, "default", "b")).unwrap();
        let lines: Vec<String> = s.map(|l| describe_line(&l.unwrap())).collect().await;
        assert_eq!(lines, ["ADDED a", "ADDED b", "DELETED a", "DELETED b"]);
    }
}
