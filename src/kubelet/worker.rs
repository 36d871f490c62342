//! One task per pod: it makes the pod's sandbox, runs its init containers in order and then its
//! containers, restarts them by the restart policy with the kubelet's exponential back-off
//! (CrashLoopBackOff), runs probes, reports status when it changes, and on deletion stops the
//! containers gracefully (SIGTERM, grace period, SIGKILL), removes the sandbox and finally
//! deletes the pod object.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;

use super::admission;
use super::ipam::Ipam;
use super::probes::{self, Outcome, ProbeState};
use super::sandbox::{self, PodNetConfig, PodNetwork};
use super::status::{ContainerView, PodView, RunState, pod_status};
use super::volumes::PodVolumes;
use super::volumes::content::Objects;
use crate::events::Recorder;
use crate::images::BuiltinImage;
use crate::images::manager::{
    EnsureRequest, EventType, ImageFailure, ImageManager, ImageSource, PullPolicy, image_source,
    present_over_builtin_event,
};
use crate::images::oci::keyring::PullSecret;
use crate::images::oci::reference;
use crate::images::store::index::Query;
use crate::lab::state::LabDir;
use crate::netlink::Netlink;
use crate::runtime::{
    ContainerConfig, ContainerId, ContainerPort, ContainerRuntime, ContainerState, ContainerStatus,
    ImageRootfs, PodIdentity, RuntimeError, SandboxInfo, SecurityContext, VolumeMount,
};

/// The longest back-off between restarts, as the kubelet's.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long has its back-off reset.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often a pod's containers are checked when nothing else wakes the worker.
const POLL: Duration = Duration::from_millis(500);
/// A refused pod has nothing to check: its next change (deletion) wakes the worker.
const REJECTED_POLL: Duration = Duration::from_secs(3600);

/// Which container instances a pod has, for `logs` and `exec`.
#[derive(Debug, Clone, Default)]
pub struct PodEntry {
    pub uid: String,
    /// Container name → its latest instance (running, or the last that ran).
    pub containers: BTreeMap<String, Option<ContainerId>>,
}

/// Pods by (namespace, name).
pub type Registry = Arc<Mutex<BTreeMap<(String, String), PodEntry>>>;

/// What every pod worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Where pods' files go (`<kubelet root>/pods/<uid>`).
    pub pods_dir: crate::fsguard::OwnedDir,
    pub node_name: String,
    pub node_ip: String,
    pub lab_dir: LabDir,
    pub net: PodNetConfig,
    pub ipam: Ipam,
    pub host: Netlink,
    pub events: Recorder,
    pub registry: Registry,
    /// First delay of the restart back-off (10 s in the kubelet).
    pub restart_backoff: Duration,
    /// Service-link variables every container gets (the `kubernetes` Service's).
    pub base_env: Mutex<Vec<(String, String)>>,
    /// kemu's image store with the kubelet's pull policy and back-off; `None` when the store
    /// could not be opened (built-in images and host commands still run).
    pub images: Option<Arc<ImageManager>>,
    /// Cluster DNS and the node's resolv.conf.
    pub dns: super::dns::DnsSettings,
    /// ConfigMaps, Secrets and tokens for pods' volumes and environments.
    pub volume_sources: Arc<super::volumes::Sources>,
    /// The user namespace pods' containers run in (the process runtime's): volume files
    /// belong to its root. `None`: containers share the host's ids (Docker).
    pub pod_ids: Option<crate::runtime::process::userns::IdRange>,
}

/// How often a running pod's configMap, secret, downwardAPI and projected volumes are
/// brought up to date (the kubelet's sync period is a minute; its watch-based managers see
/// changes at once).
const VOLUME_REFRESH: Duration = Duration::from_secs(1);

/// How soon a container whose image is not there yet is looked at again (the image manager's
/// back-off decides when a pull is tried again).
const IMAGE_RETRY: Duration = Duration::from_secs(2);

/// One container of the pod spec, as the worker tracks it.
struct Slot {
    spec: Container,
    init: bool,
    id: Option<ContainerId>,
    /// The latest instance, kept after it exits (for logs).
    latest: Option<ContainerId>,
    restart_count: i32,
    state: RunState,
    last_termination: Option<RunState>,
    exit_seen: bool,
    /// No (re)start before this.
    not_before: Option<Instant>,
    backoff: Duration,
    started: Option<Instant>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
}

impl Slot {
    /// Step the exponential back-off (`first`, then doubling up to [`MAX_BACKOFF`]) and
    /// return the delay that was due before this step (zero the first time).
    fn step_backoff(&mut self, first: Duration) -> Duration {
        let delay = self.backoff;
        self.backoff = if delay.is_zero() {
            first
        } else {
            (delay * 2).min(MAX_BACKOFF)
        };
        delay
    }

    fn new(spec: &Container, init: bool) -> Slot {
        Slot {
            spec: spec.clone(),
            init,
            id: None,
            latest: None,
            restart_count: 0,
            state: RunState::Waiting {
                reason: if init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }
                .into(),
                message: None,
            },
            last_termination: None,
            exit_seen: false,
            not_before: None,
            backoff: Duration::ZERO,
            started: None,
            readiness: None,
            liveness: None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, RunState::Terminated { exit_code: 0, .. })
            || (self.id.is_none()
                && matches!(
                    self.last_termination,
                    Some(RunState::Terminated { exit_code: 0, .. })
                )
                && self.init)
    }

    fn view(&self, runtime: &str) -> ContainerView {
        ContainerView {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            container_id: self
                .id
                .as_ref()
                .or(self.latest.as_ref())
                .map(|id| format!("{runtime}://{id}")),
            state: self.state.clone(),
            last_state: self.last_termination.clone(),
            ready: self.running() && self.readiness.as_ref().is_none_or(|r| r.passing),
            restart_count: self.restart_count,
        }
    }
}

/// A pod's worker.
pub struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    net: Option<PodNetwork>,
    slots: Vec<Slot>,
    start_time: Option<Timestamp>,
    reported: Option<PodStatus>,
    /// Refused by admission, and reported so.
    rejected: bool,
    /// The pod's volumes once set up, and when they were last refreshed.
    volumes: Option<(PodVolumes, Instant)>,
    /// What the volumes and environment read.
    objects: Objects,
    /// The last `FailedMount` message reported (each is reported once).
    mount_failure: Option<String>,
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

fn label(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

impl Worker {
    /// A worker for `pod`; `adopted` are containers of it found on disk (after a restart).
    pub fn new(ctx: Arc<Ctx>, pod: &Pod, adopted: Vec<ContainerStatus>) -> Worker {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec.containers.iter().map(|c| Slot::new(c, false)));
        // Adopt what an earlier kubelet started: the newest instance of each container.
        for slot in &mut slots {
            if let Some(last) = adopted
                .iter()
                .filter(|c| c.container_name == slot.spec.name)
                .max_by_key(|c| c.attempt)
            {
                slot.id = Some(last.id.clone());
                slot.latest = Some(last.id.clone());
                slot.restart_count = last.attempt as i32;
                slot.started = Some(Instant::now());
            }
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        let reported = pod.status.clone();
        Worker {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ctx,
            net: None,
            slots,
            start_time,
            reported,
            rejected: false,
            volumes: None,
            objects: Objects::default(),
            mount_failure: None,
        }
    }

    /// Run until the pod is gone. `rx` carries the pod's latest version; `None` means it was
    /// removed from the API (force deletion).
    pub async fn run(mut self, mut rx: watch::Receiver<Option<Pod>>) {
        loop {
            let pod = rx.borrow_and_update().clone();
            let Some(pod) = pod else {
                self.terminate(None, Duration::ZERO).await;
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0);
                self.terminate(Some(&pod), Duration::from_secs(grace as u64))
                    .await;
                return;
            }
            let wake = self.sync(&pod).await;
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return; // the kubelet is shutting down: leave the pod running
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn publish(&self, pod: &Pod) {
        let mut registry = self.ctx.registry.lock().expect("registry");
        let entry = registry
            .entry((
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            ))
            .or_default();
        entry.uid = self.uid.clone();
        entry.containers = self
            .slots
            .iter()
            .map(|s| (s.spec.name.clone(), s.latest.clone()))
            .collect();
    }

    /// One pass over the pod; returns when to look again.
    async fn sync(&mut self, pod: &Pod) -> Instant {
        let now = Instant::now();
        if let Some(refusal) = admission::refusal(pod) {
            // Nothing of the pod is made; only its deletion wakes the worker again.
            if !self.rejected {
                self.rejected = self.reject(pod, &refusal).await;
            }
            return now + if self.rejected { REJECTED_POLL } else { POLL };
        }
        let mut wake = now + POLL;
        if self.start_time.is_none() {
            self.start_time = Some(Timestamp::now());
        }
        if !self.sync_volumes(pod).await {
            self.report(pod).await;
            return now + Duration::from_secs(1);
        }
        if self.net.is_none() {
            match self.ensure_sandbox(pod).await {
                Ok(net) => {
                    self.net = Some(net);
                    let (_, events) = super::dns::pod_resolv_conf(pod, &self.ctx.dns);
                    for (reason, message) in events {
                        self.ctx
                            .events
                            .pod(pod, None, "Warning", reason, message)
                            .await;
                    }
                }
                Err(e) => {
                    self.ctx
                        .events
                        .pod(
                            pod,
                            None,
                            "Warning",
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {e:#}"),
                        )
                        .await;
                    self.report(pod).await;
                    return now + Duration::from_secs(2);
                }
            }
        }
        let policy = restart_policy(pod);
        for i in 0..self.slots.len() {
            self.observe(pod, i, &policy).await;
        }
        // Init containers run one at a time, each to completion, before the others.
        let first_unfinished_init = self.slots.iter().position(|s| s.init && !s.succeeded());
        let runnable: Vec<usize> = match first_unfinished_init {
            Some(i) => vec![i],
            None => (0..self.slots.len())
                .filter(|i| !self.slots[*i].init)
                .collect(),
        };
        for i in runnable {
            if let Some(at) = self.maybe_start(pod, i, &policy).await {
                wake = wake.min(at);
            }
        }
        self.publish(pod);
        for i in 0..self.slots.len() {
            if let Some(at) = self.probe(pod, i).await {
                wake = wake.min(at);
            }
        }
        self.report(pod).await;
        wake.max(Instant::now() + Duration::from_millis(20))
    }

    /// Set up the pod's volumes (before its sandbox, as the kubelet's volume manager does) and
    /// keep them current. False while they cannot be set up: the pod waits, and each new
    /// reason is reported as a `FailedMount` event.
    async fn sync_volumes(&mut self, pod: &Pod) -> bool {
        if let Some((_, at)) = &self.volumes
            && at.elapsed() < VOLUME_REFRESH
        {
            return true;
        }
        let downward = super::env::Downward {
            pod_ip: self.net.as_ref().map(|n| n.ip.to_string()),
            host_ip: Some(self.ctx.node_ip.clone()),
        };
        let result = match self.ctx.volume_sources.gather(pod, downward).await {
            Ok(objects) => {
                let pod_dir = self.ctx.pods_dir.root().join(&self.uid);
                let place = super::volumes::Place {
                    owner: &self.ctx.pods_dir,
                    pod_dir: &pod_dir,
                    pod_ids: self.ctx.pod_ids.as_ref(),
                    lab_root: &self.ctx.lab_dir.root,
                };
                let none = PodVolumes::default();
                let previous = self.volumes.as_ref().map_or(&none, |(v, _)| v);
                let set_up =
                    super::volumes::set_up(&self.ctx.client, &place, pod, &objects, previous).await;
                self.objects = objects;
                set_up
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(volumes) => {
                self.volumes = Some((volumes, Instant::now()));
                self.mount_failure = None;
                true
            }
            Err(message) => {
                if self.mount_failure.as_deref() != Some(message.as_str()) {
                    self.ctx
                        .events
                        .pod(pod, None, "Warning", "FailedMount", message.clone())
                        .await;
                    self.mount_failure = Some(message);
                }
                // Running containers keep the volumes as they were.
                match &mut self.volumes {
                    Some((_, at)) => {
                        *at = Instant::now();
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Report a refused pod as the kubelet's `rejectPod` does: a Warning event and the phase
    /// Failed with the reason. True once the status is written (or was already, by an earlier
    /// kubelet).
    async fn reject(&mut self, pod: &Pod, refusal: &admission::Refusal) -> bool {
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) == Some("Failed")
            && status.and_then(|s| s.reason.as_deref()) == Some(refusal.reason)
        {
            return true;
        }
        self.ctx
            .events
            .pod(
                pod,
                None,
                "Warning",
                refusal.reason,
                refusal.message.clone(),
            )
            .await;
        let patch = serde_json::json!({"status": {
            "phase": "Failed",
            "reason": refusal.reason,
            "message": refusal.status_message(),
            "qosClass": "BestEffort",
        }});
        match patch_pod_status(&self.ctx.client, pod, &patch).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(pod = %label(pod), "report the rejection: {e}");
                false
            }
        }
    }

    async fn ensure_sandbox(&self, pod: &Pod) -> anyhow::Result<PodNetwork> {
        if let Some(existing) = sandbox::existing(&self.ctx.net, &self.ctx.ipam, &self.uid) {
            return Ok(existing);
        }
        let identity = self.identity(pod);
        let adopt = self.ctx.runtime.create_sandbox(&identity).await?;
        let created = sandbox::create(
            &self.ctx.host,
            &self.ctx.lab_dir,
            &self.ctx.net,
            &self.ctx.ipam,
            &self.uid,
            &label(pod),
            adopt.as_deref(),
        )
        .await;
        if created.is_err() {
            let _ = self.ctx.runtime.remove_sandbox(&self.uid).await;
        }
        created
    }

    /// The pod as a runtime's sandbox knows it.
    fn identity(&self, pod: &Pod) -> PodIdentity {
        let name = pod.metadata.name.clone().unwrap_or_default();
        PodIdentity {
            pod_uid: self.uid.clone(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            hostname: pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| name.clone()),
            pod_name: name,
        }
    }

    /// Learn what a started container is doing; handle its exit.
    async fn observe(&mut self, pod: &Pod, i: usize, policy: &str) {
        let Some(id) = self.slots[i].id.clone() else {
            return;
        };
        let state = match self.ctx.runtime.status(&id).await {
            Ok(status) => status.state,
            Err(RuntimeError::NotFound(_)) => ContainerState::Exited {
                exit_code: 137,
                signal: None,
                started_at: jiff::Timestamp::now(),
                finished_at: jiff::Timestamp::now(),
                reason: "ContainerStatusUnknown".into(),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
            },
            Err(e) => {
                tracing::warn!(%id, "container status: {e}");
                return;
            }
        };
        let slot = &mut self.slots[i];
        match state {
            ContainerState::Running { started_at } => {
                slot.state = RunState::Running { started_at };
                if slot.started.is_none() {
                    slot.started = Some(Instant::now());
                }
            }
            ContainerState::Exited {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                if slot.exit_seen {
                    return;
                }
                slot.exit_seen = true;
                let terminated = RunState::Terminated {
                    exit_code,
                    signal,
                    reason,
                    message,
                    started_at: Some(started_at),
                    finished_at,
                    container_id: Some(format!("{}://{id}", self.ctx.runtime.name())),
                };
                slot.readiness = None;
                slot.liveness = None;
                let restart = match policy {
                    "Always" => !slot.init || exit_code != 0,
                    "OnFailure" => exit_code != 0,
                    _ => false,
                };
                if !restart {
                    slot.state = terminated;
                    return;
                }
                slot.last_termination = Some(terminated);
                if slot.started.is_some_and(|s| s.elapsed() >= BACKOFF_RESET) {
                    slot.backoff = Duration::ZERO;
                }
                let delay = slot.step_backoff(self.ctx.restart_backoff);
                slot.not_before = Some(Instant::now() + delay);
                slot.id = None;
                if !delay.is_zero() {
                    let name = slot.spec.name.clone();
                    slot.state = RunState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {} restarting failed container={name} pod={}_{}({})",
                            go_duration(delay),
                            pod.metadata.name.as_deref().unwrap_or(""),
                            pod.metadata.namespace.as_deref().unwrap_or(""),
                            self.uid
                        )),
                    };
                    self.ctx
                        .events
                        .pod(
                            pod,
                            Some(&name),
                            "Warning",
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {name} in pod {}_{}({})",
                                pod.metadata.name.as_deref().unwrap_or(""),
                                pod.metadata.namespace.as_deref().unwrap_or(""),
                                self.uid
                            ),
                        )
                        .await;
                }
            }
        }
    }

    /// Start a container that should run and may; returns when to try again.
    async fn maybe_start(&mut self, pod: &Pod, i: usize, policy: &str) -> Option<Instant> {
        let slot = &self.slots[i];
        if slot.id.is_some() {
            return None;
        }
        let finished_for_good = matches!(slot.state, RunState::Terminated { .. });
        if finished_for_good {
            return None;
        }
        if let Some(at) = slot.not_before
            && Instant::now() < at
        {
            return Some(at);
        }
        let _ = policy;
        let container = slot.spec.clone();
        let image = container.image.clone().unwrap_or_default();
        let name = container.name.clone();
        let mut config = match self.container_config(pod, &container) {
            Ok(c) => c,
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.state = RunState::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(e.to_string()),
                };
                self.ctx
                    .events
                    .pod(pod, Some(&name), "Warning", "Failed", format!("Error: {e}"))
                    .await;
                return Some(Instant::now() + Duration::from_secs(2));
            }
        };
        match self.volume_mounts(pod, &container) {
            Ok(mounts) => config.volume_mounts = mounts,
            Err(message) => {
                self.slots[i].state = RunState::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(message.clone()),
                };
                self.ctx
                    .events
                    .pod(
                        pod,
                        Some(&name),
                        "Warning",
                        "Failed",
                        format!("Error: {message}"),
                    )
                    .await;
                return Some(Instant::now() + Duration::from_secs(2));
            }
        }
        match self.image_rootfs(pod, &container).await {
            Ok(rootfs) => config.rootfs = rootfs,
            Err(failure) => {
                let slot = &mut self.slots[i];
                slot.state = RunState::Waiting {
                    reason: failure.reason.into(),
                    message: Some(failure.message),
                };
                slot.not_before = Some(Instant::now() + IMAGE_RETRY);
                return slot.not_before;
            }
        }
        let from_store = config.rootfs.is_some();
        let sandbox = self.sandbox_info(pod);
        let result = self.ctx.runtime.create_and_start(&sandbox, &config).await;
        let attempt = match &result {
            Ok(id) => self
                .ctx
                .runtime
                .status(id)
                .await
                .map(|st| st.attempt)
                .unwrap_or(0),
            Err(_) => 0,
        };
        let slot = &mut self.slots[i];
        match result {
            Ok(id) => {
                slot.restart_count = attempt as i32;
                slot.latest = Some(id.clone());
                slot.id = Some(id);
                slot.exit_seen = false;
                slot.not_before = None;
                slot.started = Some(Instant::now());
                slot.state = RunState::Running {
                    started_at: Timestamp::now(),
                };
                let started = Instant::now();
                slot.readiness = container
                    .readiness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, started, false));
                slot.liveness = container
                    .liveness_probe
                    .as_ref()
                    .map(|p| ProbeState::new(p, started, true));
                let events = &self.ctx.events;
                if !from_store {
                    // The image manager told about store images before the start.
                    events
                        .pod(
                            pod,
                            Some(&name),
                            "Normal",
                            "Pulled",
                            format!("Container image \"{image}\" already present on machine"),
                        )
                        .await;
                }
                events
                    .pod(
                        pod,
                        Some(&name),
                        "Normal",
                        "Created",
                        format!("Created container: {name}"),
                    )
                    .await;
                events
                    .pod(
                        pod,
                        Some(&name),
                        "Normal",
                        "Started",
                        format!("Started container {name}"),
                    )
                    .await;
                None
            }
            Err(
                err @ (RuntimeError::ImageNotAvailable { .. } | RuntimeError::NotInEngine { .. }),
            ) => {
                let first = slot.step_backoff(self.ctx.restart_backoff).is_zero();
                slot.not_before = Some(Instant::now() + slot.backoff);
                let (reason, message) = if first {
                    ("ErrImagePull", err.to_string())
                } else {
                    (
                        "ImagePullBackOff",
                        format!("Back-off pulling image \"{image}\": {err}"),
                    )
                };
                slot.state = RunState::Waiting {
                    reason: reason.into(),
                    message: Some(message),
                };
                let events = &self.ctx.events;
                if first {
                    events
                        .pod(
                            pod,
                            Some(&name),
                            "Warning",
                            "Failed",
                            format!("Failed to pull image \"{image}\": {err}"),
                        )
                        .await;
                    events
                        .pod(
                            pod,
                            Some(&name),
                            "Warning",
                            "Failed",
                            "Error: ErrImagePull".into(),
                        )
                        .await;
                } else {
                    events
                        .pod(
                            pod,
                            Some(&name),
                            "Normal",
                            "BackOff",
                            format!("Back-off pulling image \"{image}\""),
                        )
                        .await;
                    events
                        .pod(
                            pod,
                            Some(&name),
                            "Warning",
                            "Failed",
                            "Error: ImagePullBackOff".into(),
                        )
                        .await;
                }
                self.slots[i].not_before
            }
            Err(e) => {
                // A command that cannot start fails like a crash: back off and retry.
                let delay = slot.step_backoff(self.ctx.restart_backoff);
                slot.not_before = Some(Instant::now() + delay);
                slot.state = RunState::Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(format!("{e:#}")),
                };
                self.ctx
                    .events
                    .pod(
                        pod,
                        Some(&name),
                        "Warning",
                        "Failed",
                        format!("Error: {e:#}"),
                    )
                    .await;
                self.slots[i].not_before
            }
        }
    }

    /// The image of a container from kemu's store, pulled first if the pull policy says so
    /// (`images::manager`), with the kubelet's events; `None` for a built-in image or a host
    /// command. An error is the container's waiting state.
    async fn image_rootfs(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<Option<ImageRootfs>, ImageFailure> {
        let Some(manager) = self.ctx.images.as_ref() else {
            return Ok(None);
        };
        let image = c.image.as_deref().unwrap_or_default();
        let lab = self.ctx.net.lab.as_str();
        let normalized = reference::normalize(image);
        let in_store = normalized.as_ref().is_ok_and(|full| {
            manager
                .store()
                .find(&Query::Name(full.clone()), Some(lab))
                .is_ok()
        });
        let builtin = BuiltinImage::resolve(image).is_some();
        let docker_hub = normalized
            .as_ref()
            .is_ok_and(|full| full.starts_with("docker.io/"));
        let has_command = c.command.as_ref().is_some_and(|cmd| !cmd.is_empty());
        if image_source(in_store, builtin, has_command, docker_hub) != ImageSource::Store {
            return Ok(None);
        }
        let secrets = self.pull_secrets(pod, &c.name).await;
        let request = EnsureRequest {
            pod_uid: &self.uid,
            image,
            policy: PullPolicy::of(c.image_pull_policy.as_deref(), image),
            pull_secrets: &secrets,
            lab: Some(lab),
        };
        let mut events = Vec::new();
        let result = manager.ensure(&request, Instant::now(), &mut events).await;
        for mut event in events {
            if builtin
                && let Ok(prepared) = &result
                && event.reason == "Pulled"
                && event.message.ends_with("already present on machine")
            {
                event = present_over_builtin_event(image, &prepared.record.id.to_string());
            }
            let kind = match event.event_type {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            };
            self.ctx
                .events
                .pod(pod, Some(&c.name), kind, event.reason, event.message)
                .await;
        }
        let prepared = result.map_err(|mut failure| {
            if docker_hub && failure.reason != "ErrImageNeverPull" {
                // Labs rarely reach Docker Hub: say what works without it.
                failure.message.push_str(&format!(
                    " (kemu: built-in images are {}; other images must be loaded into kemu's image store with `kemu image load`, or pulled from a registry the lab reaches)",
                    crate::images::builtin_list()
                ));
            }
            failure
        })?;
        Ok(Some(ImageRootfs {
            image_id: prepared.record.id.to_string(),
            layers: prepared.layer_dirs,
            config: prepared.config.config().clone(),
        }))
    }

    /// The pod's `imagePullSecrets`, read from the API; missing ones are a warning, as the
    /// kubelet's.
    async fn pull_secrets(&self, pod: &Pod, container: &str) -> Vec<PullSecret> {
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let secrets: Api<Secret> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let secret = secrets.get_opt(&name).await.ok().flatten();
            let data = |key: &str| {
                secret
                    .as_ref()
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get(key))
                    .map(|b| b.0.clone())
            };
            match secret.as_ref().and_then(|s| s.type_.as_deref()) {
                Some("kubernetes.io/dockerconfigjson") if data(".dockerconfigjson").is_some() => {
                    found.push(PullSecret::DockerConfigJson(
                        data(".dockerconfigjson").unwrap_or_default(),
                    ))
                }
                Some("kubernetes.io/dockercfg") if data(".dockercfg").is_some() => found.push(
                    PullSecret::DockerCfg(data(".dockercfg").unwrap_or_default()),
                ),
                _ => missing.push(name),
            }
        }
        if !missing.is_empty() {
            self.ctx
                .events
                .pod(
                    pod,
                    Some(container),
                    "Warning",
                    "FailedToRetrieveImagePullSecret",
                    format!(
                        "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                        missing.join(", ")
                    ),
                )
                .await;
        }
        found
    }

    /// The pod's volumes a container mounts.
    fn volume_mounts(&self, pod: &Pod, c: &Container) -> Result<Vec<VolumeMount>, String> {
        let volumes = self
            .volumes
            .as_ref()
            .map(|(v, _)| v)
            .cloned()
            .unwrap_or_default();
        super::volumes::container_mounts(&volumes, pod, c)
    }

    fn sandbox_info(&self, pod: &Pod) -> SandboxInfo {
        let net = self
            .net
            .as_ref()
            .expect("sandbox exists before containers start");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone());
        SandboxInfo {
            pod_uid: self.uid.clone(),
            pod_name: name,
            namespace: ns.clone(),
            netns_path: crate::netns::path_of(&net.namespace),
            hostname: hostname.clone(),
            pod_dir: self.ctx.pods_dir.root().join(&self.uid),
            etc_hosts: format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}\t{hostname}\n",
                net.ip
            ),
            resolv_conf: super::dns::pod_resolv_conf(pod, &self.ctx.dns).0.render(),
        }
    }

    fn container_config(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<ContainerConfig, super::env::EnvError> {
        let mut objects = self.objects.clone();
        objects.downward = super::env::Downward {
            pod_ip: self.net.as_ref().map(|n| n.ip.to_string()),
            host_ip: Some(self.ctx.node_ip.clone()),
        };
        let base = self.ctx.base_env.lock().expect("env").clone();
        let env = super::env::environment(pod, c, &base, &objects)?;
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter()
                .flatten()
                .map(|a| super::env::expand(a, &env))
                .collect()
        };
        let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let own = c.security_context.as_ref();
        let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        let caps = |pick: fn(&k8s_openapi::api::core::v1::Capabilities) -> Option<&Vec<String>>| -> Vec<String> {
            own.and_then(|s| s.capabilities.as_ref()).and_then(pick).cloned().unwrap_or_default()
        };
        Ok(ContainerConfig {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            command: expand(&c.command),
            args: expand(&c.args),
            working_dir: c.working_dir.clone(),
            ports: c
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(ContainerPort {
                        name: p.name.clone(),
                        container_port: u16::try_from(p.container_port).ok()?,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    })
                })
                .collect(),
            security: SecurityContext {
                run_as_user: id(own
                    .and_then(|s| s.run_as_user)
                    .or(pod_security.and_then(|s| s.run_as_user))),
                run_as_group: id(own
                    .and_then(|s| s.run_as_group)
                    .or(pod_security.and_then(|s| s.run_as_group))),
                supplemental_groups: pod_security
                    .and_then(|s| s.supplemental_groups.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|g| u32::try_from(*g).ok())
                    .collect(),
                privileged: own.and_then(|s| s.privileged).unwrap_or(false),
                capabilities_add: caps(|c| c.add.as_ref()),
                capabilities_drop: caps(|c| c.drop.as_ref()),
            },
            env,
            rootfs: None,
            volume_mounts: Vec::new(),
        })
    }

    /// Run due probes of container `i`; a liveness failure restarts it.
    async fn probe(&mut self, pod: &Pod, i: usize) -> Option<Instant> {
        let slot = &self.slots[i];
        let (Some(id), Some(net)) = (slot.id.clone(), self.net.as_ref()) else {
            return None;
        };
        if !slot.running() {
            return None;
        }
        let pod_ip = IpAddr::V4(net.ip);
        let container = slot.spec.clone();
        let mut next: Option<Instant> = None;
        for liveness in [false, true] {
            let (probe, state) = if liveness {
                (
                    container.liveness_probe.as_ref(),
                    self.slots[i].liveness.as_ref(),
                )
            } else {
                (
                    container.readiness_probe.as_ref(),
                    self.slots[i].readiness.as_ref(),
                )
            };
            let (Some(probe), Some(state)) = (probe, state) else {
                continue;
            };
            let now = Instant::now();
            if now < state.next {
                next = Some(next.map_or(state.next, |n: Instant| n.min(state.next)));
                continue;
            }
            let outcome = probes::run(probe, &container, pod_ip, &self.ctx.runtime, &id).await;
            let slot = &mut self.slots[i];
            let state = if liveness {
                slot.liveness.as_mut()
            } else {
                slot.readiness.as_mut()
            }
            .expect("probe state");
            state.record(probe, &outcome, Instant::now());
            let (passing, due) = (state.passing, state.next);
            next = Some(next.map_or(due, |n| n.min(due)));
            if let Outcome::Failure(why) = &outcome {
                let kind = if liveness { "Liveness" } else { "Readiness" };
                self.ctx
                    .events
                    .pod(
                        pod,
                        Some(&container.name),
                        "Warning",
                        "Unhealthy",
                        format!("{kind} probe failed: {why}"),
                    )
                    .await;
            }
            if liveness && !passing {
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(0) as u64;
                self.ctx
                    .events
                    .pod(
                        pod,
                        Some(&container.name),
                        "Normal",
                        "Killing",
                        format!(
                            "Container {} failed liveness probe, will be restarted",
                            container.name
                        ),
                    )
                    .await;
                if let Err(e) = self.ctx.runtime.stop(&id, Duration::from_secs(grace)).await {
                    tracing::warn!(%id, "stop after a failed liveness probe: {e}");
                }
                return Some(Instant::now());
            }
        }
        next
    }

    /// Write the pod's status if it changed.
    async fn report(&mut self, pod: &Pod) {
        let runtime = self.ctx.runtime.name();
        let mut view = PodView {
            pod_ip: self.net.as_ref().map(|n| n.ip.to_string()),
            host_ip: Some(self.ctx.node_ip.clone()),
            start_time: self.start_time,
            sandbox_ready: self.net.is_some(),
            ..Default::default()
        };
        for slot in &self.slots {
            if slot.init {
                view.init_containers.push(slot.view(runtime));
            } else {
                view.containers.push(slot.view(runtime));
            }
        }
        let previous = self.reported.clone().or_else(|| pod.status.clone());
        let status = pod_status(pod, &view, previous.as_ref(), Timestamp::now());
        // Unchanged since the last report, unless the API's copy has drifted from it (the node
        // lifecycle controller marks pods not ready while the node looked unreachable).
        if Some(&status) == self.reported.as_ref() && !drifted(pod.status.as_ref(), &status) {
            return;
        }
        let patch = serde_json::json!({"status": status});
        match patch_pod_status(&self.ctx.client, pod, &patch).await {
            Ok(_) => self.reported = Some(status),
            Err(e) => tracing::warn!(pod = %label(pod), "update status: {e}"),
        }
    }

    /// Stop everything of the pod; `pod` is the pod to delete afterwards (graceful deletion),
    /// `None` when it is already gone from the API.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration) {
        let mut running = Vec::new();
        for slot in &self.slots {
            let Some(id) = slot.id.clone() else { continue };
            let is_running = matches!(
                self.ctx.runtime.status(&id).await.map(|s| s.state),
                Ok(ContainerState::Running { .. })
            );
            if let (Some(pod), true) = (pod, is_running) {
                let message = format!("Stopping container {}", slot.spec.name);
                self.ctx
                    .events
                    .pod(pod, Some(&slot.spec.name), "Normal", "Killing", message)
                    .await;
            }
            running.push(id);
        }
        let runtime = &self.ctx.runtime;
        futures::future::join_all(running.iter().map(|id| runtime.stop(id, grace))).await;
        remove_pod(&self.ctx, &self.uid).await;
        self.ctx
            .registry
            .lock()
            .expect("registry")
            .retain(|_, e| e.uid != self.uid);
        if let Some(pod) = pod {
            let pods: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            if let Err(e) = pods
                .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
                .await
            {
                tracing::warn!(pod = %label(pod), "final delete: {e}");
            }
        }
    }
}

/// A duration the way Go prints it (`10s`, `1m20s`, `5m0s`).
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Clean up a pod this kubelet no longer runs (found on disk after a restart): stop its
/// containers, remove its sandbox and address.
pub async fn clean_up_orphan(ctx: &Ctx, uid: &str) {
    let ids: Vec<ContainerId> = ctx
        .runtime
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.pod_uid == uid)
        .map(|c| c.id)
        .collect();
    futures::future::join_all(
        ids.iter()
            .map(|id| ctx.runtime.stop(id, Duration::from_secs(2))),
    )
    .await;
    remove_pod(ctx, uid).await;
}

/// Remove every container of a pod (stopped already), its sandbox and its address.
async fn remove_pod(ctx: &Ctx, uid: &str) {
    for c in ctx
        .runtime
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.pod_uid == uid)
    {
        if let Err(e) = ctx.runtime.remove(&c.id).await {
            tracing::warn!(id = %c.id, "remove container: {e}");
        }
    }
    if let Err(e) = sandbox::destroy(&ctx.host, &ctx.net, &ctx.ipam, uid).await {
        tracing::warn!(%uid, "remove the pod sandbox: {e:#}");
    }
    if let Err(e) = ctx.runtime.remove_sandbox(uid).await {
        tracing::warn!(%uid, "remove the pod's sandbox container: {e:#}");
    }
    ctx.volume_sources.forget(uid);
    let _ = ctx.pods_dir.remove_dir_all(&ctx.pods_dir.root().join(uid));
}

/// Merge-patch the status of `pod` (the kubelet's one way of reporting it).
async fn patch_pod_status(
    client: &kube::Client,
    pod: &Pod,
    patch: &serde_json::Value,
) -> kube::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap_or(""),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
}

/// Whether the API's status of a pod says something else than `reported` about what others
/// act on: its phase and its Ready condition.
fn drifted(api: Option<&PodStatus>, reported: &PodStatus) -> bool {
    let ready = |s: &PodStatus| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
    };
    match api {
        None => true,
        Some(api) => api.phase != reported.phase || ready(api) != ready(reported),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_print_like_go() {
        use std::time::Duration;
        assert_eq!(super::go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(super::go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(super::go_duration(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn a_status_the_api_changed_behind_the_kubelet_is_sent_again() {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let status = |phase: &str, ready: &str| PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let reported = status("Running", "True");
        assert!(!super::drifted(Some(&status("Running", "True")), &reported));
        // The node lifecycle controller marked it not ready while the node looked gone.
        assert!(super::drifted(Some(&status("Running", "False")), &reported));
        assert!(super::drifted(Some(&status("Pending", "True")), &reported));
        assert!(super::drifted(None, &reported));
    }
}
