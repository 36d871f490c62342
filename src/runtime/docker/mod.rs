//! The `docker` runtime: a pod's containers run in the local Docker engine, from the
//! engine's images (built or loaded by the user; kemu pulls nothing), through bollard.
//!
//! As dockershim did, each pod has a sandbox container (kemu's built-in pause, networking
//! `none`); the kubelet pins and wires the sandbox's network namespace as it does its own
//! pod namespaces, and the pod's containers join it (`container:<sandbox>` network and IPC).
//! Every container carries labels naming the lab, node, pod, container and attempt
//! (`spec`), so a restarted kubelet adopts exactly its node's containers and `kemu down`
//! removes exactly its lab's; nothing is removed before its lab label has been checked.
//!
//! Built-in images (`nginx`, `agnhost`, `pause`) that the engine lacks run from the kemu
//! binary, bind-mounted into an empty image kemu imports (`spec::BASE_IMAGE`).

pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, ResizeExecOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use tokio::io::AsyncWriteExt;

use self::spec::{ImageSource, Owner};
use super::{
    ContainerConfig, ContainerId, ContainerRuntime, ContainerState, ContainerStatus, ExecRequest,
    ExecSession, LogOptions, LogStream, PodIdentity, RuntimeError, SandboxInfo, TerminalSize,
};
use crate::images::BuiltinImage;

/// Where the engine listens unless `DOCKER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The engine's socket: `DOCKER_HOST` (a `unix://` address) or the default. The kubelets run
/// in their hosts' network namespaces, where only a unix socket (a file) reaches the engine.
pub fn socket_from_env() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(format!(
                "DOCKER_HOST={host}: kemu reaches the Docker engine through its unix socket only (the kubelets run in the lab's network namespaces), e.g. DOCKER_HOST=unix://{DEFAULT_SOCKET}"
            )),
        },
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// Connect to the engine at `socket` and agree on an API version; the error says how to
/// start the engine.
pub async fn connect(socket: &Path) -> Result<Docker, String> {
    let how = format!(
        "the Docker engine is not reachable at unix://{}: start it (`sudo systemctl start docker`, or `sudo dockerd --iptables=false --bridge=none &`; kemu needs neither its bridge nor its iptables rules), or point DOCKER_HOST at its unix socket",
        socket.display()
    );
    let docker = Docker::connect_with_unix(
        &socket.display().to_string(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .map_err(|e| format!("{how} ({e})"))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| format!("{how} ({e})"))?;
    docker.ping().await.map_err(|e| format!("{how} ({e})"))?;
    Ok(docker)
}

/// The Docker runtime of one node of a lab.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    lab: String,
    node: String,
    kemu_exe: PathBuf,
}

fn engine_error(action: &'static str, id: &str, e: DockerError) -> RuntimeError {
    RuntimeError::Io {
        action,
        id: id.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// An engine timestamp; the engine's zero time (`0001-01-01T00:00:00Z`, never started or
/// finished) is the Unix epoch.
fn timestamp(text: Option<&str>) -> Timestamp {
    text.and_then(|t| t.parse::<Timestamp>().ok())
        .filter(|t| t.as_second() > 0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The built-in image a container runs, when the engine lacks its image: the same rule as the
/// process runtime (a command other than the image's own program needs the real image).
fn runs_builtin(container: &ContainerConfig) -> Option<BuiltinImage> {
    let image = BuiltinImage::resolve(&container.image)?;
    match container.command.first() {
        None => Some(image),
        Some(program) if image.is_entrypoint(program) => Some(image),
        Some(_) => None,
    }
}

impl DockerRuntime {
    /// The runtime of node `node` of lab `lab`, on a connected engine; built-in images and
    /// sandboxes run from `kemu_exe`.
    pub fn new(docker: Docker, lab: &str, node: &str, kemu_exe: impl Into<PathBuf>) -> Self {
        DockerRuntime {
            docker,
            lab: lab.to_string(),
            node: node.to_string(),
            kemu_exe: kemu_exe.into(),
        }
    }

    fn owner(&self) -> Owner<'_> {
        Owner {
            lab: &self.lab,
            node: &self.node,
        }
    }

    /// Inspect one of this lab's containers; a container that is not the lab's is not found.
    async fn inspect(&self, id: &ContainerId) -> Result<ContainerInspectResponse, RuntimeError> {
        let found =
            self.docker
                .inspect_container(&id.0, None)
                .await
                .map_err(|e| match status_code(&e) {
                    Some(404) => RuntimeError::NotFound(id.clone()),
                    _ => engine_error("inspect", &id.0, e),
                })?;
        let label = |key: &str| {
            found
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(key))
                .cloned()
        };
        if label(spec::LAB).as_deref() != Some(self.lab.as_str()) {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        Ok(found)
    }

    /// The ids of this node's containers (sandboxes too), with their labels.
    async fn listed(&self) -> Result<Vec<(String, HashMap<String, String>)>, RuntimeError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&spec::node_filters(&self.owner()))
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine_error("list", "containers", e))?;
        Ok(found
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            // The engine filtered on these labels already; checked again before any use.
            .filter(|(_, labels)| {
                labels.get(spec::LAB) == Some(&self.lab)
                    && labels.get(spec::NODE) == Some(&self.node)
            })
            .collect())
    }

    /// The instances of a container name of a pod, oldest first, as (attempt, id).
    async fn instances(
        &self,
        pod_uid: &str,
        name: &str,
    ) -> Result<Vec<(u32, ContainerId)>, RuntimeError> {
        let mut found: Vec<(u32, ContainerId)> = self
            .listed()
            .await?
            .into_iter()
            .filter(|(_, l)| {
                l.get(spec::KIND).map(String::as_str) == Some(spec::KIND_CONTAINER)
                    && l.get(spec::POD_UID).map(String::as_str) == Some(pod_uid)
                    && l.get(spec::CONTAINER).map(String::as_str) == Some(name)
            })
            .map(|(id, l)| {
                let attempt = l
                    .get(spec::ATTEMPT)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                (attempt, ContainerId(id))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    async fn sandbox_of(&self, pod_uid: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.listed().await?.into_iter().find_map(|(id, l)| {
            (l.get(spec::KIND).map(String::as_str) == Some(spec::KIND_SANDBOX)
                && l.get(spec::POD_UID).map(String::as_str) == Some(pod_uid))
            .then_some(id)
        }))
    }

    /// Remove a container after checking it is this lab's (a running one is killed).
    async fn remove_checked(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        match self.inspect(id).await {
            Ok(_) => {}
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&id.0, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine_error("remove", &id.0, e)),
        }
    }

    async fn state_of(&self, id: &ContainerId) -> Result<ContainerStatus, RuntimeError> {
        let found = self.inspect(id).await?;
        Ok(status_from(id, &found))
    }

    /// Wait until a container no longer runs (after a stop that timed out on the engine's
    /// side, e.g. a SIGKILL still being delivered).
    async fn wait_exited(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        for _ in 0..100 {
            let status = self.state_of(id).await?;
            if matches!(status.state, ContainerState::Exited { .. }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(engine_error_io(
            "stop",
            &id.0,
            std::io::Error::other("it still runs 10 s after SIGKILL"),
        ))
    }
}

/// Import the empty base image unless the engine has it (an empty root filesystem: the
/// kemu binary is mounted into it). `kemu up` does it before the kubelets start, so that
/// they do not import it side by side.
pub async fn ensure_base_image(docker: &Docker) -> Result<(), RuntimeError> {
    if docker.inspect_image(spec::BASE_IMAGE).await.is_ok() {
        return Ok(());
    }
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["dev", "etc", "proc", "sys", "tmp"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty())
            .map_err(|e| engine_error_io("import", spec::BASE_IMAGE, e))?;
    }
    let bytes = tar
        .into_inner()
        .map_err(|e| engine_error_io("import", spec::BASE_IMAGE, e))?;
    let (repo, tag) = spec::BASE_IMAGE
        .split_once(':')
        .expect("the base image has a tag");
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    docker
        .create_image(
            Some(options),
            Some(bollard::body_full(Bytes::from(bytes))),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| engine_error("import", spec::BASE_IMAGE, e))?;
    Ok(())
}

fn engine_error_io(action: &'static str, id: &str, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        action,
        id: id.to_string(),
        source: e,
    }
}

/// A container's status from the engine's view of it and kemu's labels.
fn status_from(id: &ContainerId, found: &ContainerInspectResponse) -> ContainerStatus {
    let labels = found
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let state = found.state.clone().unwrap_or_default();
    let started_at = timestamp(state.started_at.as_deref());
    let running = matches!(
        state.status,
        Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::PAUSED)
            | Some(ContainerStateStatusEnum::RESTARTING)
    );
    let (state, pid) = if running {
        (
            ContainerState::Running { started_at },
            state.pid.and_then(|p| u32::try_from(p).ok()),
        )
    } else {
        let exit_code = state.exit_code.unwrap_or(0) as i32;
        let never_started = started_at == Timestamp::UNIX_EPOCH;
        let reason = if state.oom_killed == Some(true) {
            "OOMKilled"
        } else if never_started {
            "ContainerStatusUnknown"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let message = state.error.filter(|e| !e.is_empty());
        (
            ContainerState::Exited {
                exit_code,
                signal: None,
                started_at,
                finished_at: timestamp(state.finished_at.as_deref()).max(started_at),
                reason: reason.into(),
                message,
            },
            None,
        )
    };
    ContainerStatus {
        id: id.clone(),
        pod_uid: label(spec::POD_UID),
        pod_name: label(spec::POD_NAME),
        namespace: label(spec::POD_NAMESPACE),
        container_name: label(spec::CONTAINER),
        attempt: label(spec::ATTEMPT).parse().unwrap_or(0),
        image: label(spec::IMAGE),
        state,
        pid,
    }
}

impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn create_sandbox<'a>(
        &'a self,
        pod: &'a PodIdentity,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, RuntimeError>> {
        Box::pin(async move {
            ensure_base_image(&self.docker).await?;
            // A sandbox left from an attempt that failed half-way goes first.
            if let Some(old) = self.sandbox_of(&pod.pod_uid).await? {
                self.remove_checked(&ContainerId(old)).await?;
            }
            let name = spec::container_name(&self.lab, "POD", pod, 0);
            let failed = |message: String| RuntimeError::StartFailed {
                pod: format!("{}/{}", pod.namespace, pod.pod_name),
                container: "POD".into(),
                message,
            };
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                    spec::sandbox_body(&self.owner(), pod, &self.kemu_exe),
                )
                .await
                .map_err(|e| failed(format!("create the sandbox container: {e}")))?;
            let id = ContainerId(created.id);
            if let Err(e) = self.docker.start_container(&id.0, None).await {
                let _ = self.remove_checked(&id).await;
                return Err(failed(format!("start the sandbox container: {e}")));
            }
            let status = self.state_of(&id).await?;
            match status.pid {
                Some(pid) => Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net")))),
                None => {
                    let _ = self.remove_checked(&id).await;
                    Err(failed("the sandbox container exited at once".into()))
                }
            }
        })
    }

    fn remove_sandbox<'a>(&'a self, pod_uid: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            if let Some(id) = self.sandbox_of(pod_uid).await? {
                self.remove_checked(&ContainerId(id)).await?;
            }
            Ok(())
        })
    }

    fn create_and_start<'a>(
        &'a self,
        sandbox: &'a SandboxInfo,
        container: &'a ContainerConfig,
    ) -> BoxFuture<'a, Result<ContainerId, RuntimeError>> {
        Box::pin(async move {
            let failed = |message: String| RuntimeError::StartFailed {
                pod: format!("{}/{}", sandbox.namespace, sandbox.pod_name),
                container: container.name.clone(),
                message,
            };
            let source = if self.docker.inspect_image(&container.image).await.is_ok() {
                ImageSource::Engine
            } else if let Some(image) = runs_builtin(container) {
                ensure_base_image(&self.docker).await?;
                ImageSource::Builtin(image)
            } else {
                return Err(spec::missing_image(container));
            };
            let sandbox_id = self
                .sandbox_of(&sandbox.pod_uid)
                .await?
                .ok_or_else(|| failed("the pod's sandbox container is gone".into()))?;
            // The pod's /etc/hosts and /etc/resolv.conf, bind-mounted into each container.
            let files = sandbox.pod_dir.join("docker");
            std::fs::create_dir_all(&files)
                .and_then(|()| std::fs::write(files.join("hosts"), &sandbox.etc_hosts))
                .and_then(|()| std::fs::write(files.join("resolv.conf"), &sandbox.resolv_conf))
                .map_err(|e| failed(format!("write the pod's /etc files: {e}")))?;
            let before = self.instances(&sandbox.pod_uid, &container.name).await?;
            let attempt = before.last().map(|(a, _)| a + 1).unwrap_or(0);
            let body = spec::container_body(
                &self.owner(),
                sandbox,
                container,
                attempt,
                &sandbox_id,
                source,
                &files,
                &self.kemu_exe,
            );
            let name =
                spec::container_name(&self.lab, &container.name, &sandbox.identity(), attempt);
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                    body,
                )
                .await
                .map_err(|e| failed(format!("create: {e}")))?;
            let id = ContainerId(created.id);
            if let Err(e) = self.docker.start_container(&id.0, None).await {
                let _ = self.remove_checked(&id).await;
                return Err(failed(e.to_string()));
            }
            // Keep the newest earlier instance for `logs --previous`; older ones go.
            if before.len() > 1 {
                for (_, old) in &before[..before.len() - 1] {
                    let _ = self.remove_checked(old).await;
                }
            }
            Ok(id)
        })
    }

    fn stop<'a>(
        &'a self,
        id: &'a ContainerId,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.inspect(id).await?;
            let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
            let options = StopContainerOptionsBuilder::default().t(seconds).build();
            match self.docker.stop_container(&id.0, Some(options)).await {
                // 304: it was not running.
                Ok(()) => {}
                Err(e) if status_code(&e) == Some(304) => {}
                Err(e) if status_code(&e) == Some(404) => {
                    return Err(RuntimeError::NotFound(id.clone()));
                }
                Err(e) => return Err(engine_error("stop", &id.0, e)),
            }
            self.wait_exited(id).await
        })
    }

    fn status<'a>(
        &'a self,
        id: &'a ContainerId,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>> {
        Box::pin(self.state_of(id))
    }

    fn remove<'a>(&'a self, id: &'a ContainerId) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.remove_checked(id))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>, RuntimeError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for (id, labels) in self.listed().await? {
                if labels.get(spec::KIND).map(String::as_str) != Some(spec::KIND_CONTAINER) {
                    continue;
                }
                match self.state_of(&ContainerId(id)).await {
                    Ok(status) => all.push(status),
                    Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            all.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(all)
        })
    }

    fn logs<'a>(
        &'a self,
        id: &'a ContainerId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        Box::pin(async move {
            let status = self.state_of(id).await?;
            let target = if options.previous {
                self.instances(&status.pod_uid, &status.container_name)
                    .await?
                    .into_iter()
                    .rfind(|(attempt, _)| *attempt < status.attempt)
                    .map(|(_, id)| id)
                    .ok_or_else(|| RuntimeError::NoPrevious {
                        pod: format!("{}/{}", status.namespace, status.pod_name),
                        container: status.container_name.clone(),
                    })?
            } else {
                id.clone()
            };
            let since = options
                .since
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
                .unwrap_or(0);
            let tail = options
                .tail_lines
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into());
            let query = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .follow(options.follow)
                .timestamps(options.timestamps)
                .since(since)
                .tail(&tail)
                .build();
            let stream = self
                .docker
                .logs(&target.0, Some(query))
                .map_err(std::io::Error::other)
                .map_ok(|chunk| chunk.into_bytes());
            let limited = limit(stream, options.limit_bytes);
            Ok(Box::pin(limited) as LogStream)
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a ContainerId,
        request: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, RuntimeError>> {
        Box::pin(async move {
            let status = self.state_of(id).await?;
            if !matches!(status.state, ContainerState::Running { .. }) {
                return Err(RuntimeError::NotRunning(id.clone()));
            }
            if request.command.is_empty() {
                return Err(RuntimeError::Invalid {
                    what: "exec command",
                    value: String::new(),
                    why: "a command is required",
                });
            }
            start_exec(self.docker.clone(), id, request).await
        })
    }
}

/// At most `limit` bytes of a stream of chunks; it ends once they are out.
fn limit(
    stream: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    limit: Option<u64>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    stream.scan(limit.unwrap_or(u64::MAX), |left, chunk| {
        if *left == 0 {
            return futures::future::ready(None);
        }
        let chunk = chunk.map(|mut chunk| {
            if chunk.len() as u64 > *left {
                chunk.truncate(*left as usize);
            }
            *left -= chunk.len() as u64;
            chunk
        });
        futures::future::ready(Some(chunk))
    })
}

/// Start `request` in a running container and hand its streams over as the kubelet's exec
/// server wants them.
async fn start_exec(
    docker: Docker,
    id: &ContainerId,
    request: ExecRequest,
) -> Result<ExecSession, RuntimeError> {
    let created = docker
        .create_exec(
            &id.0,
            CreateExecOptions::<String> {
                attach_stdin: Some(request.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(request.tty),
                cmd: Some(request.command.clone()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine_error("exec in", &id.0, e))?;
    let exec_id = created.id;
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty: request.tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| engine_error("exec in", &id.0, e))?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err(engine_error_io(
            "exec in",
            &id.0,
            std::io::Error::other("the engine detached the command"),
        ));
    };
    let (stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
    let (stderr_w, stderr_r) = tokio::io::duplex(64 * 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut out, mut err) = (stdout_w, stderr_w);
        while let Some(Ok(chunk)) = output.next().await {
            use bollard::container::LogOutput;
            let written = match chunk {
                LogOutput::StdErr { message } => err.write_all(&message).await,
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    out.write_all(&message).await
                }
                LogOutput::StdIn { .. } => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
        drop((out, err));
        let _ = done_tx.send(());
    });
    let exit_docker = docker.clone();
    let exit_id = exec_id.clone();
    let container = id.0.clone();
    let exit = Box::pin(async move {
        let _ = done_rx.await;
        // The output ends a little before the engine records the exit code.
        for _ in 0..50 {
            let inspected = exit_docker
                .inspect_exec(&exit_id)
                .await
                .map_err(|e| engine_error("exec in", &container, e))?;
            if inspected.running != Some(true) {
                return Ok(inspected.exit_code.unwrap_or(0) as i32);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(engine_error_io(
            "exec in",
            &container,
            std::io::Error::other("the command's exit code never came"),
        ))
    });
    let resize = request.tty.then(|| {
        let handle = tokio::runtime::Handle::current();
        let docker = docker.clone();
        let exec_id = exec_id.clone();
        Box::new(move |size: TerminalSize| {
            let docker = docker.clone();
            let exec_id = exec_id.clone();
            let options = ResizeExecOptionsBuilder::default()
                .h(i32::from(size.height))
                .w(i32::from(size.width))
                .build();
            handle.spawn(async move {
                let _ = docker.resize_exec(&exec_id, options).await;
            });
            Ok(())
        }) as Box<dyn Fn(TerminalSize) -> std::io::Result<()> + Send + Sync>
    });
    Ok(ExecSession {
        stdin: request.stdin.then_some(input),
        stdout: Box::pin(stdout_r),
        stderr: (!request.tty).then(|| Box::pin(stderr_r) as _),
        resize,
        exit,
    })
}

/// Remove every container of lab `lab` from the engine (what `kemu down` does); each one's
/// lab label is checked before it goes. Returns how many were removed.
pub async fn remove_lab_containers(docker: &Docker, lab: &str) -> Result<usize, String> {
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&spec::lab_filters(lab))
        .build();
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| format!("list the lab's containers in the Docker engine: {e}"))?;
    let mut removed = 0;
    let mut errors = Vec::new();
    // The pods' containers first, then their sandboxes.
    let mut ids: Vec<(bool, String)> = found
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(spec::LAB))
                .map(String::as_str)
                == Some(lab)
        })
        .filter_map(|c| {
            let sandbox = c
                .labels
                .as_ref()
                .and_then(|l| l.get(spec::KIND))
                .map(String::as_str)
                == Some(spec::KIND_SANDBOX);
            Some((sandbox, c.id?))
        })
        .collect();
    ids.sort();
    for (_, id) in ids {
        // Checked once more right before removal: the label is what makes it kemu's.
        let ours = docker
            .inspect_container(&id, None)
            .await
            .ok()
            .and_then(|c| c.config?.labels?.get(spec::LAB).cloned())
            .is_some_and(|l| l == lab);
        if !ours {
            continue;
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => removed += 1,
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => errors.push(format!("remove container {id}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// Run `work` against the engine from synchronous code (`kemu up`, `kemu down`): on a thread
/// of its own with a small runtime, so that it works inside or outside an async context.
fn on_engine<T, F>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> BoxFuture<'static, Result<T, String>> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("start a runtime for the Docker engine: {e}"))?
            .block_on(work())
    })
    .join()
    .unwrap_or_else(|_| Err("the Docker engine thread panicked".into()))
}

/// `kemu up`'s check that the engine answers (the error says how to start it), and the
/// base image's import.
pub fn prepare_engine(socket: &Path) -> Result<(), String> {
    let socket = socket.to_path_buf();
    on_engine(move || {
        Box::pin(async move {
            let docker = connect(&socket).await?;
            ensure_base_image(&docker).await.map_err(|e| e.to_string())
        })
    })
}

/// `kemu down`'s clean-up: every container of lab `lab` in the engine at `socket`.
pub fn clean_up_lab(socket: &Path, lab: &str) -> Result<usize, String> {
    let socket = socket.to_path_buf();
    let lab = lab.to_string();
    on_engine(move || {
        Box::pin(async move {
            let docker = connect(&socket).await?;
            remove_lab_containers(&docker, &lab).await
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limit_bytes_cuts_the_last_chunk_and_ends() {
        let chunks = ["abc", "defg", "hij"].map(|c| Ok(Bytes::from(c)));
        let out: Vec<Bytes> = limit(futures::stream::iter(chunks), Some(5))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out, [Bytes::from("abc"), Bytes::from("de")]);
        // A stream that never ends is left once the limit is reached.
        let endless = futures::stream::repeat_with(|| Ok(Bytes::from("xy")));
        let out: Vec<Bytes> = limit(endless, Some(3)).try_collect().await.unwrap();
        assert_eq!(out.concat(), b"xyx");
        let all: Vec<Bytes> = limit(futures::stream::iter([Ok(Bytes::from("a"))]), None)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all.concat(), b"a");
    }

    #[test]
    fn engine_times_and_the_zero_time() {
        assert_eq!(
            timestamp(Some("0001-01-01T00:00:00Z")),
            Timestamp::UNIX_EPOCH
        );
        assert_eq!(timestamp(None), Timestamp::UNIX_EPOCH);
        assert_eq!(
            timestamp(Some("2026-12-05T03:14:36.123456789Z")).as_second(),
            1796440476
        );
    }
}
