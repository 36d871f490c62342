//! The node lifecycle controller (with the taint-eviction and pod-GC parts kemu needs).
//!
//! - Heartbeats are a renewal of the Lease `kube-node-lease/<node>` or a new `lastHeartbeatTime`
//!   on the Node's Ready condition. The controller notes, on its own clock, when it last saw one
//!   (as kube does, so clock skew does not matter). A node silent for longer than
//!   `--node-monitor-grace-period` gets Ready, MemoryPressure, DiskPressure and PIDPressure set to
//!   `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting node status."), a
//!   `NodeNotReady` event, and its pods' Ready condition set to False (a `NodeNotReady` warning on
//!   each pod).
//! - Silence is judged only on a whole view: while the controller's own node or Lease watch is
//!   broken (the API server restarting, say) nothing is judged, and after it lists again every
//!   grace period counts from that list at the earliest. Heartbeats that could not land while
//!   the API server was down are not the nodes' fault (kube gets the same from its leader
//!   election: a controller-manager that loses the API server restarts with fresh timestamps).
//! - Taints follow the conditions ([`health::wanted_taints`]): `node.kubernetes.io/unreachable`
//!   (Ready Unknown) or `not-ready` (Ready False) as NoSchedule at once, pressure taints, and
//!   `unschedulable` for cordoned nodes. The matching NoExecute taint waits for the node's turn
//!   in its zone's rate-limited queue ([`ratelimit`], `--node-eviction-rate`); the zone's state
//!   ([`zones`]) sets that rate, and when every zone is fully disrupted (master disruption mode)
//!   the NoExecute taints go and none are added. When the kubelet reports Ready again the taints
//!   go and a `NodeReady` event is recorded.
//! - Pods on a node with a NoExecute taint are evicted (deleted gracefully, event
//!   `TaintManagerEviction`) when their toleration runs out; `--pod-eviction-timeout` caps the
//!   wait (the default 300 s tolerations would otherwise keep them there for five minutes). The
//!   evicted pods stay `Terminating` until the node comes back, as in a real cluster, while their
//!   controllers replace them elsewhere.
//! - Pods bound to a node that was deleted are deleted at once (the pod GC).
//!
//! No polling loop: each node is synced when it, its Lease or a pod bound to it changes, and
//! again when its grace period or the next eviction would expire; the zones are looked at when
//! a node's readiness changes, and again when a zone's next taint is due.

pub mod health;
pub mod ratelimit;
pub mod zones;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::util;
use crate::events::{Recorder, reference};
use health::NoExecute;
use ratelimit::TaintQueue;
use zones::{Disruption, Step};

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// A failed NoExecute taint is tried again this much later (its token is spent, as in kube).
const TAINT_RETRY: Duration = Duration::from_millis(500);

/// The controller's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub grace_period: Duration,
    pub eviction_timeout: Duration,
    pub rates: zones::Rates,
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

/// The zones as the controller last saw them, and their taint queues.
#[derive(Default)]
struct Zones {
    disruption: Disruption,
    queues: BTreeMap<String, TaintQueue>,
}

/// A unit of work of the controller's one worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Work {
    /// Look at one node.
    Node(String),
    /// Recompute the zone states, then taint the nodes whose turn has come.
    Zones,
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Work::Node(name) => write!(f, "node {name}"),
            Work::Zones => f.write_str("zones"),
        }
    }
}

/// A zone name for the logs (`""` is the zone of nodes without zone labels).
fn zone_name(zone: &str) -> String {
    if zone.is_empty() {
        "(no zone)".into()
    } else {
        zone.replace('\0', "")
    }
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
pub fn run(shared: Arc<Shared>, settings: Settings) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue<Work> = WorkQueue::new();
    {
        let q = queue.clone();
        shared.nodes.on_change(move |change| match change {
            Change::Applied { new, .. } => q.add(Work::Node(new.name_any())),
            Change::Deleted(old) => q.add(Work::Node(old.name_any())),
        });
    }
    {
        let q = queue.clone();
        shared.leases.on_change(move |change| {
            if let Change::Applied { new, .. } = change {
                q.add(Work::Node(new.name_any()));
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
                q.add(Work::Node(node.to_string()));
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
            settings,
            health: Mutex::new(HashMap::new()),
            zones: Mutex::new(Zones::default()),
            queue: queue.clone(),
        });
        queue.add(Work::Zones);
        run_worker("node-lifecycle-controller", queue, move |work| {
            let c = c.clone();
            async move {
                match work {
                    Work::Node(name) => c.sync_node(&name).await,
                    Work::Zones => c.sync_zones().await,
                }
            }
        })
        .await;
    }
}

struct Controller {
    shared: Arc<Shared>,
    node_recorder: Recorder,
    eviction_recorder: Recorder,
    settings: Settings,
    health: Mutex<HashMap<String, Health>>,
    zones: Mutex<Zones>,
    queue: WorkQueue<Work>,
}

impl Controller {
    /// Since when the controller's view of nodes and Leases is whole; `None` while a watch is
    /// broken.
    fn view_since(&self) -> Option<Instant> {
        let nodes = self.shared.nodes.fresh_since()?;
        let leases = self.shared.leases.fresh_since()?;
        Some(nodes.max(leases))
    }

    async fn sync_node(&self, name: &str) -> anyhow::Result<Option<Duration>> {
        let Some(node) = self.shared.nodes.get(&Key::new("", name)) else {
            let known = self
                .health
                .lock()
                .expect("health lock")
                .remove(name)
                .is_some();
            for q in self.zones.lock().expect("zones lock").queues.values_mut() {
                q.remove(name);
            }
            if known {
                self.queue.add(Work::Zones);
                self.delete_orphaned_pods(name).await?;
            }
            return Ok(None);
        };
        let lease = self
            .shared
            .leases
            .get(&Key::new(LEASE_NAMESPACE, name.to_string()));
        let beat = heartbeat(&node, lease.as_deref());
        let now = Instant::now();
        let (probe, previous_ready) = {
            let mut all = self.health.lock().expect("health lock");
            let h = all.entry(name.to_string()).or_insert_with(|| {
                // A node the zones have not counted yet.
                self.queue.add(Work::Zones);
                Health {
                    heartbeat: beat.clone(),
                    probe: now,
                    ready: health::ready_status(&node),
                }
            });
            if h.heartbeat != beat {
                h.heartbeat = beat;
                h.probe = now;
            }
            (h.probe, h.ready.clone())
        };
        let mut node = node.as_ref().clone();
        let grace = self.settings.grace_period;
        let mut again: Option<Duration> = None;

        // 1. A silent node becomes Unknown, judged on a whole view only.
        match self.view_since() {
            None => again = Some(grace),
            Some(whole) => {
                let silent_for = now.saturating_duration_since(probe.max(whole));
                if silent_for > grace {
                    if let Some(conditions) =
                        health::silent_conditions(&node, jiff::Timestamp::now())
                    {
                        tracing::info!(node = %name, "no heartbeat for {silent_for:?}: status unknown");
                        node = self.patch_conditions(name, conditions).await?;
                    }
                } else {
                    again = Some(grace - silent_for + Duration::from_millis(50));
                }
            }
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
                    self.mark_pods_not_ready(name).await?;
                }
                _ => {}
            }
            if let Some(h) = self.health.lock().expect("health lock").get_mut(name) {
                h.ready = ready.clone();
            }
            self.queue.add(Work::Zones);
        }

        // 3. Taints follow the conditions; a new NoExecute one waits for its zone's turn.
        let no_execute = self.no_execute(&node, now);
        node = self.set_taints(&node, no_execute).await?;

        // 4. Evictions from NoExecute taints.
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints.iter().any(|t| t.effect == "NoExecute") {
            let now_wall = jiff::Timestamp::now();
            for pod in self.shared.pods.list() {
                if node_of(&pod) != Some(name) || !util::is_active(&pod) {
                    continue;
                }
                let Some(at) = health::eviction_time(&pod, &taints, self.settings.eviction_timeout)
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

    /// The NoExecute condition taint the node may carry now; queues it in its zone when it must
    /// wait for its turn, and takes it out of the queue when it no longer waits.
    fn no_execute(&self, node: &Node, now: Instant) -> Option<&'static str> {
        let name = node.name_any();
        let zone = zones::zone_key(node);
        let mut zones = self.zones.lock().expect("zones lock");
        let decision = health::no_execute(node, zones.disruption.master_disruption());
        let rate = self.settings.rates.eviction_rate;
        let queue = zones
            .queues
            .entry(zone.clone())
            .or_insert_with(|| TaintQueue::new(rate, now));
        match decision {
            NoExecute::Clear => {
                queue.remove(&name);
                None
            }
            NoExecute::Now(key) => {
                queue.remove(&name);
                Some(key)
            }
            NoExecute::Queue(key) => {
                if queue.add(&name, now) {
                    tracing::info!(node = %name, zone = %zone_name(&zone), "not ready: queued for the {key}:NoExecute taint");
                    self.queue.add(Work::Zones);
                }
                None
            }
        }
    }

    /// Recompute the zone states (and master disruption mode), then taint the nodes whose turn
    /// has come; run again when the next turn comes.
    async fn sync_zones(&self) -> anyhow::Result<Option<Duration>> {
        let now = Instant::now();
        let nodes: BTreeMap<String, Arc<Node>> = self
            .shared
            .nodes
            .list()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        let counts = zones::count(nodes.values().map(|n| n.as_ref()));
        let rates = self.settings.rates;
        let (step, turns) = {
            let mut zones = self.zones.lock().expect("zones lock");
            for zone in counts.keys() {
                zones
                    .queues
                    .entry(zone.clone())
                    .or_insert_with(|| TaintQueue::new(rates.eviction_rate, now));
            }
            zones
                .queues
                .retain(|z, q| counts.contains_key(z) || !q.is_empty());
            let step = zones.disruption.update(&counts, &rates);
            match &step {
                Step::Nothing => {}
                Step::EnterMasterDisruption => {
                    tracing::warn!(
                        "Controller detected that all Nodes are not-Ready. Entering master disruption mode"
                    );
                    for q in zones.queues.values_mut() {
                        q.clear();
                        q.swap_limiter(0.0, now);
                    }
                }
                Step::ExitMasterDisruption(states) | Step::Zones(states) => {
                    if matches!(step, Step::ExitMasterDisruption(_)) {
                        tracing::info!(
                            "Controller detected that some Nodes are Ready. Exiting master disruption mode"
                        );
                    }
                    for (zone, (state, rate)) in states {
                        tracing::info!(zone = %zone_name(zone), "zone is now {state:?}: tainting at {rate}/s");
                        if let Some(q) = zones.queues.get_mut(zone) {
                            q.swap_limiter(*rate, now);
                        }
                    }
                }
            }
            let mut turns = Vec::new();
            for (zone, q) in zones.queues.iter_mut() {
                turns.extend(q.take(now).into_iter().map(|n| (zone.clone(), n)));
            }
            (step, turns)
        };
        match step {
            Step::EnterMasterDisruption => {
                // Each node's sync removes its NoExecute taint.
                for name in nodes.keys() {
                    self.queue.add(Work::Node(name.clone()));
                }
            }
            Step::ExitMasterDisruption(_) => {
                // Every grace period starts again, and nodes still down queue for their taint.
                for h in self.health.lock().expect("health lock").values_mut() {
                    h.probe = now;
                }
                for name in nodes.keys() {
                    self.queue.add(Work::Node(name.clone()));
                }
            }
            _ => {}
        }

        for (zone, name) in turns {
            let Some(node) = nodes.get(&name) else {
                continue;
            };
            let Some(key) = health::no_execute_key(node) else {
                continue;
            };
            match self.set_taints(node, Some(key)).await {
                Ok(_) => {
                    tracing::info!(node = %name, zone = %zone_name(&zone), "its turn came: {key}:NoExecute")
                }
                Err(e) => {
                    tracing::warn!(node = %name, "NoExecute taint failed: {e:#}");
                    if let Some(q) = self.zones.lock().expect("zones lock").queues.get_mut(&zone) {
                        q.retry(&name, Instant::now() + TAINT_RETRY);
                    }
                }
            }
        }

        let now = Instant::now();
        let next = self
            .zones
            .lock()
            .expect("zones lock")
            .queues
            .values()
            .filter_map(|q| q.next_turn(now))
            .min();
        Ok(next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1)))
    }

    /// Bring the node's taints to what its conditions and `no_execute` call for.
    async fn set_taints(&self, node: &Node, no_execute: Option<&str>) -> anyhow::Result<Node> {
        let wanted = health::wanted_taints(node, jiff::Timestamp::now(), no_execute);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if wanted == current {
            return Ok(node.clone());
        }
        self.patch_taints(node, &wanted).await
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
