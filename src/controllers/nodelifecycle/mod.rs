//! The node lifecycle controller (with the taint-eviction and pod-GC parts kemu needs).
//!
//! - Heartbeats are a renewal of the Lease `kube-node-lease/<node>` or a new `lastHeartbeatTime`
//!   on the Node's Ready condition. The controller notes, on its own clock, when it last saw one
//!   (as kube does, so clock skew does not matter). A node silent for longer than
//!   `--node-monitor-grace-period` gets Ready, MemoryPressure, DiskPressure and PIDPressure set to
//!   `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting node status."), a
//!   `NodeNotReady` event, and its pods' Ready condition set to False (a `NodeNotReady` warning on
//!   each pod).
//! - Taints follow the conditions ([`health::wanted_taints`]): `node.kubernetes.io/unreachable`
//!   (Ready Unknown) or `not-ready` (Ready False), each as NoSchedule and NoExecute, pressure
//!   taints, and `unschedulable` for cordoned nodes. When the kubelet reports Ready again the
//!   taints go and a `NodeReady` event is recorded.
//! - Pods on a node with a NoExecute taint are evicted (deleted gracefully, event
//!   `TaintManagerEviction`) when their toleration runs out; `--pod-eviction-timeout` caps the
//!   wait (the default 300 s tolerations would otherwise keep them there for five minutes). The
//!   evicted pods stay `Terminating` until the node comes back, as in a real cluster, while their
//!   controllers replace them elsewhere.
//! - Pods bound to a node that was deleted are deleted at once (the pod GC).
//!
//! No polling loop: each node is synced when it, its Lease or a pod bound to it changes, and
//! again when its grace period or the next eviction would expire.

pub mod health;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::time::Instant;

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::util;
use crate::events::{Recorder, reference};

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The two durations of the controller.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub grace_period: Duration,
    pub eviction_timeout: Duration,
}

/// What the controller remembers of a node.
#[derive(Debug, Clone)]
struct Health {
    /// The heartbeat values last seen: Ready's `lastHeartbeatTime`, the Lease's `renewTime`.
    heartbeat: (Option<String>, Option<String>),
    /// When (on our clock) they last changed.
    probe: Instant,
    /// The Ready status last seen.
    ready: Option<String>,
}

fn heartbeat(
    node: &Node,
    lease: Option<&k8s_openapi::api::coordination::v1::Lease>,
) -> (Option<String>, Option<String>) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_string());
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string());
    (ready, renew)
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// Register the handlers now; the future watches nodes forever once the caches are synced.
pub fn run(shared: Arc<Shared>, timing: Timing) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let q = queue.clone();
        shared.nodes.on_change(move |change| match change {
            Change::Applied { new, .. } => q.add(Key::of(*new)),
            Change::Deleted(old) => q.add(Key::of(*old)),
        });
    }
    {
        let q = queue.clone();
        shared.leases.on_change(move |change| {
            if let Change::Applied { new, .. } = change {
                q.add(Key::new("", new.name_any()));
            }
        });
    }
    {
        let q = queue.clone();
        shared.pods.on_change(move |change| {
            // A pod newly bound to a node may need eviction there.
            if let Change::Applied { old, new } = change
                && let Some(node) = node_of(new)
                && old.and_then(|o| node_of(o)) != Some(node)
            {
                q.add(Key::new("", node));
            }
        });
    }
    async move {
        shared.synced().await;
        let c = Arc::new(Controller {
            node_recorder: Recorder::new(shared.client.clone(), "node-controller", None),
            eviction_recorder: Recorder::new(
                shared.client.clone(),
                "taint-eviction-controller",
                None,
            ),
            shared,
            timing,
            health: Mutex::new(HashMap::new()),
        });
        run_worker("node-lifecycle-controller", queue, move |key| {
            let c = c.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

struct Controller {
    shared: Arc<Shared>,
    node_recorder: Recorder,
    eviction_recorder: Recorder,
    timing: Timing,
    health: Mutex<HashMap<String, Health>>,
}

impl Controller {
    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let name = key.name.clone();
        let Some(node) = self.shared.nodes.get(key) else {
            let known = self
                .health
                .lock()
                .expect("health lock")
                .remove(&name)
                .is_some();
            if known {
                self.delete_orphaned_pods(&name).await?;
            }
            return Ok(None);
        };
        let lease = self
            .shared
            .leases
            .get(&Key::new(LEASE_NAMESPACE, name.clone()));
        let beat = heartbeat(&node, lease.as_deref());
        let now = Instant::now();
        let (probe, previous_ready) = {
            let mut all = self.health.lock().expect("health lock");
            let h = all.entry(name.clone()).or_insert_with(|| Health {
                heartbeat: beat.clone(),
                probe: now,
                ready: health::ready_status(&node),
            });
            if h.heartbeat != beat {
                h.heartbeat = beat;
                h.probe = now;
            }
            (h.probe, h.ready.clone())
        };
        let mut node = node.as_ref().clone();
        let mut again: Option<Duration> = None;

        // 1. A silent node becomes Unknown.
        let silent_for = now.duration_since(probe);
        if silent_for > self.timing.grace_period {
            if let Some(conditions) = health::silent_conditions(&node, jiff::Timestamp::now()) {
                tracing::info!(node = %name, "no heartbeat for {silent_for:?}: status unknown");
                node = self.patch_conditions(&name, conditions).await?;
            }
        } else {
            again = Some(self.timing.grace_period - silent_for + Duration::from_millis(50));
        }

        // 2. Ready transitions: events, and pods no longer ready on a node that is not.
        let ready = health::ready_status(&node);
        if ready != previous_ready {
            let node_ref = reference(&node);
            match ready.as_deref() {
                Some("True") => self.node_recorder.normal(
                    &node_ref,
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                ),
                Some(_)
                    if previous_ready.as_deref() == Some("True") || previous_ready.is_none() =>
                {
                    self.node_recorder.normal(
                        &node_ref,
                        "NodeNotReady",
                        format!("Node {name} status is now: NodeNotReady"),
                    );
                    self.mark_pods_not_ready(&name).await?;
                }
                _ => {}
            }
            if let Some(h) = self.health.lock().expect("health lock").get_mut(&name) {
                h.ready = ready.clone();
            }
        }

        // 3. Taints follow the conditions.
        let wanted = health::wanted_taints(&node, jiff::Timestamp::now());
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if wanted != current {
            node = self.patch_taints(&node, &wanted).await?;
        }

        // 4. Evictions from NoExecute taints.
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints.iter().any(|t| t.effect == "NoExecute") {
            let now_wall = jiff::Timestamp::now();
            for pod in self.shared.pods.list() {
                if node_of(&pod) != Some(name.as_str()) || !util::is_active(&pod) {
                    continue;
                }
                let Some(at) = health::eviction_time(&pod, &taints, self.timing.eviction_timeout)
                else {
                    continue;
                };
                if at <= now_wall {
                    self.evict(&pod).await?;
                } else {
                    let wait = Duration::try_from(at - now_wall).unwrap_or_default()
                        + Duration::from_millis(50);
                    again = Some(again.map_or(wait, |a| a.min(wait)));
                }
            }
        }
        Ok(again)
    }

    async fn patch_conditions(
        &self,
        name: &str,
        conditions: Vec<k8s_openapi::api::core::v1::NodeCondition>,
    ) -> anyhow::Result<Node> {
        let api: Api<Node> = Api::all(self.shared.client.clone());
        let patch = serde_json::json!({"status": {"conditions": conditions}});
        let node = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(|e| anyhow::anyhow!("mark node {name} unknown: {e}"))?;
        self.shared.nodes.observe(node.clone());
        Ok(node)
    }

    async fn patch_taints(
        &self,
        node: &Node,
        taints: &[k8s_openapi::api::core::v1::Taint],
    ) -> anyhow::Result<Node> {
        let name = node.name_any();
        let api: Api<Node> = Api::all(self.shared.client.clone());
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": if taints.is_empty() { serde_json::Value::Null } else { serde_json::to_value(taints)? }},
        });
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| anyhow::anyhow!("update taints of node {name}: {e}"))?;
        tracing::info!(node = %name, taints = ?taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "taints updated");
        self.shared.nodes.observe(updated.clone());
        Ok(updated)
    }

    /// Set Ready=False on every ready pod of the node (`MarkPodsNotReady`).
    async fn mark_pods_not_ready(&self, node: &str) -> anyhow::Result<()> {
        for pod in self.shared.pods.list() {
            if node_of(&pod) != Some(node) || !util::is_ready(&pod) {
                continue;
            }
            let key = Key::of(pod.as_ref());
            let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": "False", "lastProbeTime": null,
                "lastTransitionTime": Time(jiff::Timestamp::now())}]}});
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(p) => {
                    self.shared.pods.observe(p);
                    self.node_recorder.warning(
                        &reference(pod.as_ref()),
                        "NodeNotReady",
                        "Node is not ready".into(),
                    );
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => anyhow::bail!("mark pod {key} not ready: {e}"),
            }
        }
        Ok(())
    }

    async fn evict(&self, pod: &Pod) -> anyhow::Result<()> {
        let key = Key::of(pod);
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        self.eviction_recorder.normal(
            &reference(pod),
            "TaintManagerEviction",
            format!("Marking for deletion Pod {key}"),
        );
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(answer) => {
                tracing::info!(pod = %key, "evicted");
                self.shared.observe_pod_deletion(pod, answer);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => anyhow::bail!("evict pod {key}: {e}"),
        }
    }

    /// The node is gone: its pods can never finish terminating, delete them now.
    async fn delete_orphaned_pods(&self, node: &str) -> anyhow::Result<()> {
        for pod in self.shared.pods.list() {
            if node_of(&pod) != Some(node) {
                continue;
            }
            let key = Key::of(pod.as_ref());
            let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);
            match api
                .delete(&key.name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(answer) => {
                    tracing::info!(pod = %key, node, "deleted: its node is gone");
                    self.shared.observe_pod_deletion(pod.as_ref(), answer);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => anyhow::bail!("delete pod {key} of deleted node {node}: {e}"),
            }
        }
        Ok(())
    }
}
