//! Events the kubelet writes about its pods (source component `kubelet`, host = the node), the
//! way `kubectl describe pod` shows them: Pulled, Created, Started, Killing, BackOff,
//! Unhealthy, Failed. Repeats of one (object, reason, message) are folded into one Event whose
//! `count` and `lastTimestamp` grow, as the real event recorder does.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// (namespace, object and field path, reason and message) of an event.
type EventKey = (String, String, String);

/// Records events for one node.
pub struct Recorder {
    client: kube::Client,
    node: String,
    /// (namespace, event name) of the event already written for a key, and its count.
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Record `reason`/`message` of `kind` (`Normal` or `Warning`) about `pod`, optionally for
    /// one of its containers (`fieldPath`).
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: &str,
        reason: &str,
        message: String,
    ) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let field_path = container.map(|c| {
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
        let events: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Timestamp::now();
        let key = (
            ns.clone(),
            format!("{name}/{}", field_path.clone().unwrap_or_default()),
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
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            ..Default::default()
        };
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.seen
                    .lock()
                    .expect("events")
                    .insert(key, (event_name, 1));
            }
            Err(e) => tracing::debug!("record event {reason}: {e}"),
        }
    }
}
