//! A pod found by name: its node, its network namespace, and where its containers run.
//!
//! The API server says where a pod is (`spec.nodeName`, `metadata.uid`); the pod's network
//! namespace is named after its uid (`kemu-<lab>-pod-<id>`, see `kubelet::sandbox`), and the
//! process runtime keeps each container in `<host>/kubelet/runtime/containers/<uid>_<name>_<n>/`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::lab::state::{LabDir, LabRecord};
use crate::runtime::RuntimeKind;
use crate::runtime::process::layout::{self, ContainerRecord, ExitRecord};
use crate::runtime::process::spec::{MountStep, ShimSpec};

/// Where a pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlace {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The lab host (node) it runs on.
    pub host: String,
    /// Its network namespace (the host's for `hostNetwork` pods).
    pub netns: String,
    pub host_network: bool,
    /// Its IP, once it has one.
    pub ip: Option<String>,
    /// Its containers in the order of the spec.
    pub containers: Vec<String>,
    /// The container `exec` picks when none is named (kubectl's rule: the
    /// `kubectl.kubernetes.io/default-container` annotation, else the first).
    pub default_container: Option<String>,
}

/// Where `pod` runs in the lab of `record`; an error says why it cannot be entered.
pub fn locate(record: &LabRecord, pod: &Pod) -> anyhow::Result<PodPlace> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let Some(node) = spec.node_name.clone() else {
        anyhow::bail!("pod {namespace}/{name} is not scheduled to a node yet");
    };
    let host = record.host(&node)?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let netns = if host_network {
        record.topology.host_namespace(host)
    } else {
        crate::kubelet::sandbox::pod_namespace(&record.topology.name, &uid)
    };
    let containers: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let default_container = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| containers.contains(c))
        .cloned()
        .or_else(|| containers.first().cloned());
    Ok(PodPlace {
        namespace,
        name,
        uid,
        host: host.name.clone(),
        netns,
        host_network,
        ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        containers,
        default_container,
    })
}

/// A running container of the process runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    /// Its directory (what `kemu container-exec --dir` takes).
    pub dir: PathBuf,
    /// Whether it has a root filesystem of its own (an image from the store); built-in images
    /// and host commands see the host's files.
    pub own_rootfs: bool,
}

/// The containers directory of the process runtime of `host`.
pub fn containers_dir(dir: &LabDir, host: &str) -> PathBuf {
    dir.host_dir(host)
        .join("kubelet")
        .join("runtime")
        .join("containers")
}

/// The latest running instance of container `name` of pod `uid` under `containers` (its
/// directories are `<uid>_<name>_<attempt>`).
pub fn running_container(containers: &Path, uid: &str, name: &str) -> Option<RunningContainer> {
    let mut attempts: Vec<(u32, PathBuf)> = std::fs::read_dir(containers)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let id = e.file_name().into_string().ok()?;
            let (u, n, attempt) = layout::parse_id(&id)?;
            (u == uid && n == name).then(|| (attempt, e.path()))
        })
        .collect();
    attempts.sort();
    let (_, dir) = attempts.pop()?;
    let started: ContainerRecord = layout::read_json(&dir.join(layout::CONTAINER)).ok()??;
    let ended: Option<ExitRecord> = layout::read_json(&dir.join(layout::EXIT)).ok()?;
    if ended.is_some() || !started.process().alive() {
        return None;
    }
    let spec: ShimSpec = layout::read_json(&dir.join(layout::SPEC)).ok()??;
    let own_rootfs = spec
        .mounts
        .iter()
        .any(|m| matches!(m, MountStep::ImageRoot { .. }));
    Some(RunningContainer { dir, own_rootfs })
}

/// How `kemu exec` enters a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// All of the container's namespaces (`kemu container-exec`): it has its own files.
    Container(PathBuf),
    /// The pod's network namespace with the host's files and tools (built-in images, host
    /// commands, and the Docker runtime, whose containers kemu does not enter).
    Network,
}

/// How to enter container `container` of the pod at `place`, on a host of runtime `runtime`.
pub fn entry(
    dir: &LabDir,
    place: &PodPlace,
    container: &str,
    runtime: RuntimeKind,
) -> anyhow::Result<Entry> {
    if !place.containers.iter().any(|c| c == container) {
        anyhow::bail!(
            "container {container} is not valid for pod {}; choose one of: [{}]",
            place.name,
            place.containers.join(" ")
        );
    }
    if runtime == RuntimeKind::Docker {
        return Ok(Entry::Network);
    }
    let running = running_container(&containers_dir(dir, &place.host), &place.uid, container)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "container {container} of pod {}/{} is not running",
                place.namespace,
                place.name
            )
        })?;
    Ok(if running.own_rootfs {
        Entry::Container(running.dir)
    } else {
        Entry::Network
    })
}
