//! Container runtimes: how the kubelet runs a pod's containers. One narrow trait; the `process`
//! runtime (the default) runs each container as a process tree inside the pod's network
//! namespace, with its own mount, UTS, IPC and PID namespaces (see `process`).
//!
//! Containers are addressed by a `ContainerId` the runtime chooses; everything a restarted
//! kubelet needs to find them again (`list`) and to learn how they ended while it was away
//! (`state`) lives on disk, so runtimes survive kubelet restarts.

pub mod logs;
pub mod process;
pub mod shim;

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A container, as the runtime names it (`<pod uid>/<container name>/<attempt>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where and as whom a pod's containers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub pod_uid: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// The pod's network namespace, e.g. `/run/netns/kemu-seed-pod-0a1b2c3d4e`.
    pub netns_path: PathBuf,
    /// The pod's hostname (its name).
    pub hostname: String,
    /// The pod's `/etc/hosts` and `/etc/resolv.conf`.
    pub hosts: String,
    pub resolv_conf: String,
}

/// One container to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Already resolved (values, fieldRefs, `$(VAR)`).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Declared container ports (built-in images listen on them).
    pub ports: Vec<u16>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// Which start of this container this is (0, then 1 after the first restart, ...).
    pub attempt: u32,
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    /// Still being started (the shim has not reported the process yet).
    Created,
    Running {
        pid: i32,
        started_at: Timestamp,
    },
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        /// `StartError` when the command could not be started, else empty.
        reason: Option<String>,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

/// A container found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: ContainerId,
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
}

/// Why a container could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not built in and the pod gave no command (the kubelet reports
    /// `ErrImagePull` / `ImagePullBackOff`).
    #[error(
        "failed to pull image {image:?}: kemu pulls no images; the built-in images are {builtin}; any other image needs a `command:` that exists on the host"
    )]
    ImageNotFound { image: String, builtin: String },
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Options of a log read (`kubectl logs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub timestamps: bool,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<usize>,
    pub follow: bool,
}

/// A container runtime.
pub trait Runtime: Send + Sync {
    /// The runtime's name, as in `containerID` (`kemu-process://...`).
    fn name(&self) -> &'static str;

    /// Create and start a container in a pod's sandbox.
    fn start(
        &self,
        sandbox: &SandboxInfo,
        container: &ContainerConfig,
    ) -> Result<ContainerId, RuntimeError>;

    /// The container's current state (read from disk; works for containers started by an
    /// earlier kubelet).
    fn state(&self, id: &ContainerId) -> ContainerState;

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns once the container has exited.
    /// Blocking.
    fn stop(&self, id: &ContainerId, grace: Duration);

    /// Forget a container that has exited (its files, except what `logs --previous` needs).
    fn remove(&self, id: &ContainerId);

    /// Every container on disk, running or not.
    fn list(&self) -> Vec<ContainerInfo>;

    /// Remove everything of a pod (after its containers have stopped).
    fn remove_pod(&self, pod_uid: &str);

    /// The container's log file (CRI format), for `logs`.
    fn log_path(&self, id: &ContainerId) -> PathBuf;

    /// A command that runs `cmd` inside the running container (its namespaces, user and
    /// environment); the caller wires its stdio (a pty for `tty`) and waits for it.
    fn exec_command(
        &self,
        id: &ContainerId,
        cmd: &[String],
        tty: bool,
    ) -> anyhow::Result<std::process::Command>;
}
