//! The kubelet's container runtime: one narrow trait, `ContainerRuntime`, and its default
//! implementation, the `process` runtime (`process::ProcessRuntime`).
//!
//! The kubelet prepares a pod's sandbox itself (network namespace, veth, IP, `/etc/hosts`,
//! `/etc/resolv.conf`) and then asks the runtime to start, watch, stop and remove the pod's
//! containers, read their logs and run commands in them. Everything the kubelet resolves
//! (env values, fieldRefs, the pod's hostname) reaches the runtime as plain data, so a second
//! runtime (e.g. Docker) only has to implement these few methods.
//!
//! The trait is object-safe (`Arc<dyn ContainerRuntime>`): methods return boxed futures.

pub mod docker;
pub mod logs;
pub mod process;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// Which runtime a node's kubelet runs pods with (`runtime:` in the topology).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Containers are processes in the pod's namespaces (kemu's own runtime).
    #[default]
    Process,
    /// Containers run in the local Docker engine, from its images.
    Docker,
}

impl RuntimeKind {
    pub fn is_process(&self) -> bool {
        *self == RuntimeKind::Process
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
    }
}

/// A container's id, unique on the node and stable across kubelet restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a pod's containers share, prepared by the kubelet before any container starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: String,
    /// The pod's network namespace, e.g. `/run/netns/kemu-<lab>-pod-<id>`.
    pub netns_path: PathBuf,
    /// The hostname the containers see (the pod name unless `spec.hostname` says otherwise).
    pub hostname: String,
    /// The pod's directory under the kubelet's state dir (`<state>/pods/<uid>/`).
    pub pod_dir: PathBuf,
    /// The contents of the containers' `/etc/hosts`.
    pub etc_hosts: String,
    /// The contents of the containers' `/etc/resolv.conf`.
    pub resolv_conf: String,
}

/// Which pod a sandbox is for (what a runtime with sandbox containers needs before the
/// pod's network exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: String,
    pub hostname: String,
}

impl SandboxInfo {
    pub fn identity(&self) -> PodIdentity {
        PodIdentity {
            pod_name: self.pod_name.clone(),
            namespace: self.namespace.clone(),
            pod_uid: self.pod_uid.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// One container of a pod, as the kubelet resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// `command:` (replaces the image's entrypoint).
    pub command: Vec<String>,
    /// `args:`.
    pub args: Vec<String>,
    /// Environment, in order, values already resolved.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub ports: Vec<ContainerPort>,
    pub security: SecurityContext,
    /// The image's root filesystem, when the image comes from kemu's image store; `None`:
    /// a built-in image, or the container's `command:` on the host's filesystem.
    pub rootfs: Option<ImageRootfs>,
    /// The pod's volumes this container mounts (`emptyDir`).
    pub volume_mounts: Vec<VolumeMount>,
}

/// An image of the store, ready to become a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootfs {
    /// The image ID (`sha256:...` of its config).
    pub image_id: String,
    /// The unpacked layer directories, base first.
    pub layers: Vec<PathBuf>,
    /// The image config's `config` (Entrypoint, Cmd, Env, WorkingDir, User).
    pub config: Option<oci_spec::image::Config>,
}

/// A directory of the pod (an `emptyDir`) mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's directory on the host, under the pod's directory.
    pub source: PathBuf,
    /// `mountPath` inside the container.
    pub target: String,
    pub read_only: bool,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// The parts of the (pod and container) securityContext the runtime honours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// Default: 65534 (nobody).
    pub run_as_user: Option<u32>,
    /// Default: 65534 when the user is defaulted too, else the user's group in the host's
    /// `/etc/passwd`, else 0 (as container runtimes do).
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    /// All capabilities, `/proc/sys` and `/sys` writable, no `no_new_privs`.
    pub privileged: bool,
    /// `capabilities.add` (`NET_ADMIN` or `CAP_NET_ADMIN`, `ALL`).
    pub capabilities_add: Vec<String>,
    /// `capabilities.drop`.
    pub capabilities_drop: Vec<String>,
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Running {
        started_at: Timestamp,
    },
    Exited {
        /// The exit code; 128 + signal when a signal ended it.
        exit_code: i32,
        signal: Option<i32>,
        started_at: Timestamp,
        finished_at: Timestamp,
        /// `Completed`, `Error`, or `ContainerStatusUnknown` when the runtime lost track.
        reason: String,
        message: Option<String>,
    },
}

/// What `status` and `list` report about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: ContainerId,
    pub pod_uid: String,
    pub pod_name: String,
    pub namespace: String,
    pub container_name: String,
    /// How many times this container name was started in this pod before (the restart count).
    pub attempt: u32,
    pub image: String,
    pub state: ContainerState,
    /// The container's main process on the host (its PID 1 inside), while it runs.
    pub pid: Option<u32>,
}

/// How to read a container's log (the parameters of `GET .../pods/<name>/log`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance of the same container name in the pod.
    pub previous: bool,
    /// Keep streaming until the container exits.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only lines logged at or after this time (`sinceSeconds` = now - n).
    pub since: Option<SystemTime>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// Log output: chunks of text as `kubectl logs` prints them.
pub type LogStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A command to run in a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Allocate a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Give the command a stdin (otherwise it reads /dev/null).
    pub stdin: bool,
}

/// A terminal size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// A running exec: its standard streams, the terminal to resize, and its exit code.
pub struct ExecSession {
    /// Present when `ExecRequest::stdin` was set. Dropping it closes the command's stdin.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// stdout, or the terminal's output with a tty.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// stderr; `None` with a tty.
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Resize the terminal (tty only).
    pub resize: Option<Box<dyn Fn(TerminalSize) -> io::Result<()> + Send + Sync>>,
    /// Resolves to the command's exit code (128 + signal when a signal ended it).
    pub exit: BoxFuture<'static, Result<i32, RuntimeError>>,
}

/// Runtime errors. The kubelet maps them onto container states and API errors.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not built in and the container gave no command; the kubelet reports
    /// `ErrImagePull` / `ImagePullBackOff` with this message.
    #[error(
        "image {image:?} of container {container:?} is not built into kemu, is not in kemu's image store and the container has no command: load the image (`kemu image load`), use one of the built-in images ({builtin}) or give a `command:` that exists on the host"
    )]
    ImageNotAvailable {
        image: String,
        container: String,
        builtin: String,
    },
    /// The Docker runtime's engine lacks the image and kemu has not built it in; the kubelet
    /// reports `ErrImagePull` / `ImagePullBackOff` with this message.
    #[error(
        "image {image:?} of container {container:?} is not in the Docker engine and is not built into kemu: kemu pulls nothing into the engine, so build or load it there first (`docker build -t {image} ...`, `docker load -i image.tar`), or use one of the built-in images ({builtin})"
    )]
    NotInEngine {
        image: String,
        container: String,
        builtin: String,
    },
    /// The container could not be started (bad command, namespace gone, ...); the kubelet
    /// reports `RunContainerError` / `CrashLoopBackOff`.
    #[error("start container {container:?} of pod {pod:?}: {message}")]
    StartFailed {
        pod: String,
        container: String,
        message: String,
    },
    #[error("container {0} not found")]
    NotFound(ContainerId),
    #[error("container {0} is not running")]
    NotRunning(ContainerId),
    /// `logs --previous` found no earlier instance.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { pod: String, container: String },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{action} container {id}: {source}")]
    Io {
        action: &'static str,
        id: String,
        #[source]
        source: io::Error,
    },
}

/// A container runtime as the kubelet uses it. Every method is idempotent where that makes
/// sense and safe to call from a kubelet that restarted: containers outlive the kubelet.
pub trait ContainerRuntime: Send + Sync {
    /// The runtime's name, as reported in `node.status.nodeInfo.containerRuntimeVersion`
    /// (`process://...`) and in container ids.
    fn name(&self) -> &'static str;

    /// Create and start one container in a prepared sandbox. Each call starts a new instance
    /// (`attempt` one higher than the last instance of the same name in the pod); older
    /// exited instances are removed except the latest one, kept for `logs --previous`.
    /// Returns once the container's command has been executed (or failed to be).
    fn create_and_start<'a>(
        &'a self,
        sandbox: &'a SandboxInfo,
        container: &'a ContainerConfig,
    ) -> BoxFuture<'a, Result<ContainerId, RuntimeError>>;

    /// Stop a container: SIGTERM, then SIGKILL once `grace` has passed. Returns when it has
    /// exited and its exit status is recorded. Stopping an exited container does nothing.
    fn stop<'a>(
        &'a self,
        id: &'a ContainerId,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Make the pod's sandbox container, for a runtime that has one (Docker: a container
    /// without networking of its own, whose namespaces the pod's containers join), and return
    /// its network namespace (`/proc/<pid>/ns/net`) for the kubelet to pin and wire. `None`
    /// (the default): the kubelet makes a network namespace of its own.
    fn create_sandbox<'a>(
        &'a self,
        sandbox: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, RuntimeError>> {
        let _ = sandbox;
        Box::pin(async { Ok(None) })
    }

    /// Remove the pod's sandbox container, if any. Removing a removed sandbox does nothing.
    fn remove_sandbox<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let _ = pod_uid;
        Box::pin(async { Ok(()) })
    }

    /// The container's current state.
    fn status<'a>(
        &'a self,
        id: &'a ContainerId,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>>;

    /// Remove a container and everything the runtime kept for it (its log included); a
    /// running container is killed first. Removing a removed container does nothing.
    fn remove<'a>(&'a self, id: &'a ContainerId) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Every container the runtime knows, running or exited: how a restarted kubelet adopts
    /// the containers it started before.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>, RuntimeError>>;

    /// The container's log (or its previous instance's), as `kubectl logs` prints it.
    fn logs<'a>(
        &'a self,
        id: &'a ContainerId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>>;

    /// Run a command in a running container, with the container's namespaces, user, env and
    /// working directory.
    fn exec<'a>(
        &'a self,
        id: &'a ContainerId,
        request: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, RuntimeError>>;
}
