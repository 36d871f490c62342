//! The event recorder shared by kemu's agents (scheduler, controllers, kubelet): core/v1 Events
//! about an object, from a component (and host), the way `kubectl describe` shows them.
//! Repeats of one (object, reason, message) are folded into one Event whose `count` and
//! `lastTimestamp` grow, as the real event recorder does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// (namespace, object and field path, reason and message) of an event.
type EventKey = (String, String, String);

/// Records events for one component. Clones share one aggregation cache.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    /// The event already written for a key, and its count.
    seen: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
}

impl Recorder {
    /// A recorder for `component` (e.g. `kubelet`, `default-scheduler`), on `host` if any.
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            host: host.map(String::from),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Record an event about `pod`, optionally for one of its containers (`fieldPath`).
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: &str,
        reason: &str,
        message: String,
    ) {
        let mut object = reference(pod);
        object.field_path = container.map(|c| {
            let spec = pod.spec.as_ref();
            let init = spec
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|cs| cs.iter().any(|x| x.name == c));
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        self.record(object, kind, reason, message).await;
    }

    /// Record a `Normal` event in the background: controllers never wait for their events.
    pub fn normal(&self, object: &ObjectReference, reason: &str, message: String) {
        self.spawn(object.clone(), "Normal", reason, message);
    }

    /// Record a `Warning` event in the background.
    pub fn warning(&self, object: &ObjectReference, reason: &str, message: String) {
        self.spawn(object.clone(), "Warning", reason, message);
    }

    fn spawn(&self, object: ObjectReference, kind: &'static str, reason: &str, message: String) {
        let me = self.clone();
        let reason = reason.to_string();
        tokio::spawn(async move { me.record(object, kind, &reason, message).await });
    }

    /// Record `reason`/`message` of `kind` (`Normal` or `Warning`) about `object`.
    pub async fn record(&self, object: ObjectReference, kind: &str, reason: &str, message: String) {
        // Events about cluster-scoped objects (nodes) live in `default`, as the real ones do.
        let ns = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = object.name.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Timestamp::now();
        let key = (
            ns.clone(),
            format!(
                "{}/{name}/{}",
                object.kind.as_deref().unwrap_or(""),
                object.field_path.as_deref().unwrap_or("")
            ),
            format!("{reason}/{message}"),
        );
        let existing = self.seen.lock().expect("events").get(&key).cloned();
        if let Some((event_name, count)) = existing {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            if events
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.seen
                    .lock()
                    .expect("events")
                    .insert(key, (event_name, count + 1));
                return;
            }
        }
        let event_name = format!("{name}.{:x}", now.as_nanosecond() as u64);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => {
                let mut seen = self.seen.lock().expect("events");
                // Keep memory bounded in long-running labs: forget old aggregations.
                if seen.len() >= 4096 {
                    seen.clear();
                }
                seen.insert(key, (event_name, 1));
            }
            Err(e) => tracing::debug!("record event {reason}: {e}"),
        }
    }
}

impl Recorder {
    /// Forget the aggregation state of one object's events (it is gone; a kubelet calls this
    /// when a pod's worker ends, so that pod churn does not grow its memory).
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        let prefix = format!("{kind}/{name}/");
        self.seen
            .lock()
            .expect("events")
            .retain(|(ns, object, _), _| ns != namespace || !object.starts_with(&prefix));
    }
}

/// A reference to an object, for `involvedObject`.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}
