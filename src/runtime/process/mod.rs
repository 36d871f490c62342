//! The `process` runtime: a container is a process tree in the pod's network namespace with
//! its own mount, UTS, IPC and PID namespaces, the host's filesystem read-only, private
//! `/tmp`, `/var/tmp`, `/run` and `/dev/shm`, the pod's `/etc/hosts` and `/etc/resolv.conf`,
//! a minimal `/dev`, and a user namespace of its own that maps its ids onto an unprivileged
//! host range (`userns`): user 65534 unless the securityContext says otherwise, Docker's
//! default capabilities and `no_new_privs`, all of it inside that user namespace only.
//!
//! Each container is owned by a `kemu container-shim` process in its own session (`shim`),
//! which outlives the kubelet; everything about a container is in its directory (`layout`),
//! so a new `ProcessRuntime` on the same root adopts the containers of an old one.
//!
//! Built-in images (`crate::images`) run the kemu binary as `kemu builtin-image <name> ...`; other
//! images run the container's `command:` from the host.

pub mod caps;
pub mod exec;
mod init;
pub mod layout;
pub mod shim;
pub mod spec;
pub mod userns;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::io::AsyncBufReadExt;

use self::layout::{ContainerRecord, ExitRecord, ProcessRecord};
use self::spec::ShimSpec;
use self::userns::IdRange;
use super::{
    ContainerConfig, ContainerId, ContainerRuntime, ContainerState, ContainerStatus, ExecRequest,
    ExecSession, LogOptions, LogStream, RuntimeError, SandboxInfo, logs,
};
use crate::fsguard::OwnedDir;

/// How long `stop` waits for the shim to record the exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The process runtime, keeping its containers under `<root>/containers/`.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    /// `root`: every file the runtime writes or removes is proven to lie inside it.
    owned: OwnedDir,
    kemu_exe: PathBuf,
    ids: IdRange,
}

impl ProcessRuntime {
    /// A runtime whose state lives under `root` (e.g. `<kubelet state>/runtime`), starting
    /// shims and built-in images from `kemu_exe` (the kubelet's own binary, resolved once at
    /// start: `std::env::current_exe()`). Containers' user namespaces map their ids onto the
    /// host ids `ids` (the lab's range). `root` must be an absolute path other than `/`.
    pub fn new(
        root: impl Into<PathBuf>,
        kemu_exe: impl Into<PathBuf>,
        ids: IdRange,
    ) -> Result<ProcessRuntime, crate::fsguard::Escape> {
        Ok(ProcessRuntime {
            owned: OwnedDir::new(root)?,
            kemu_exe: kemu_exe.into(),
            ids,
        })
    }

    fn containers_dir(&self) -> PathBuf {
        self.owned.root().join("containers")
    }

    /// The directory of a container.
    pub fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.containers_dir().join(&id.0)
    }

    fn spec(&self, id: &ContainerId) -> Result<ShimSpec, RuntimeError> {
        if layout::parse_id(&id.0).is_none() {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        layout::read_json(&self.container_dir(id).join(layout::SPEC))
            .map_err(|source| io_error("read", id, source))?
            .ok_or_else(|| RuntimeError::NotFound(id.clone()))
    }

    /// The ids of all instances of a container name in a pod, oldest first.
    fn instances(&self, pod_uid: &str, name: &str) -> Vec<(u32, ContainerId)> {
        let mut found: Vec<(u32, ContainerId)> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                let (uid, n, attempt) = layout::parse_id(&id.0)?;
                (uid == pod_uid && n == name).then_some((attempt, id.clone()))
            })
            .collect();
        found.sort();
        found
    }

    fn ids(&self) -> Vec<ContainerId> {
        let Ok(entries) = std::fs::read_dir(self.containers_dir()) else {
            return Vec::new();
        };
        let mut ids: Vec<ContainerId> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| layout::parse_id(name).is_some())
            .map(ContainerId)
            .collect();
        ids.sort();
        ids
    }

    fn status_of(&self, id: &ContainerId) -> Result<ContainerStatus, RuntimeError> {
        let spec = self.spec(id)?;
        let dir = self.container_dir(id);
        let read = |name| dir.join(name);
        let container: Option<ContainerRecord> =
            layout::read_json(&read(layout::CONTAINER)).map_err(|e| io_error("read", id, e))?;
        let exit: Option<ExitRecord> =
            layout::read_json(&read(layout::EXIT)).map_err(|e| io_error("read", id, e))?;
        let shim: Option<ProcessRecord> =
            layout::read_json(&read(layout::SHIM)).map_err(|e| io_error("read", id, e))?;
        let started_at = container
            .as_ref()
            .map(|c| c.started_at)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let (state, pid) = match (exit, shim) {
            (Some(exit), _) => (
                ContainerState::Exited {
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    started_at,
                    finished_at: exit.finished_at,
                    reason: exit.reason,
                    message: None,
                },
                None,
            ),
            (None, Some(shim)) if shim.alive() => (
                ContainerState::Running { started_at },
                container.as_ref().map(|c| c.pid),
            ),
            _ => (
                ContainerState::Exited {
                    exit_code: 137,
                    signal: None,
                    started_at,
                    finished_at: started_at,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(
                        "the container's shim ended without recording an exit status".into(),
                    ),
                },
                None,
            ),
        };
        Ok(ContainerStatus {
            id: id.clone(),
            pod_uid: spec.pod_uid,
            pod_name: spec.pod_name,
            namespace: spec.namespace,
            container_name: spec.container_name,
            attempt: spec.attempt,
            image: spec.image,
            state,
            pid,
        })
    }

    async fn start(
        &self,
        sandbox: &SandboxInfo,
        container: &ContainerConfig,
    ) -> Result<ContainerId, RuntimeError> {
        for (what, value) in [
            ("pod uid", &sandbox.pod_uid),
            ("container name", &container.name),
        ] {
            if !layout::valid_part(value) {
                return Err(RuntimeError::Invalid {
                    what,
                    value: value.clone(),
                    why: "only letters, digits, '-' and '.' are allowed",
                });
            }
        }
        let instances = self.instances(&sandbox.pod_uid, &container.name);
        let attempt = instances.last().map(|(a, _)| a + 1).unwrap_or(0);
        let id = ContainerId(layout::container_id(
            &sandbox.pod_uid,
            &container.name,
            attempt,
        ));
        let dir = self.container_dir(&id);
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let spec = spec::build_spec(
            &id.0,
            attempt,
            &dir,
            sandbox,
            container,
            &self.kemu_exe,
            self.ids,
            &|uid| spec::passwd_gid(&passwd, uid),
        )?;
        let write = || -> std::io::Result<()> {
            let owned = &self.owned;
            owned.create_dir_all(&self.containers_dir())?;
            owned.create_dir(&dir)?;
            owned.write(&dir.join(spec::HOSTS_FILE), sandbox.etc_hosts.as_bytes())?;
            owned.write(&dir.join(spec::RESOLV_FILE), sandbox.resolv_conf.as_bytes())?;
            owned.write(
                &dir.join(spec::HOSTNAME_FILE),
                format!("{}\n", sandbox.hostname).as_bytes(),
            )?;
            layout::write_json(owned, &dir.join(layout::SPEC), &spec)
        };
        write().map_err(|e| io_error("create", &id, e))?;

        if let Err(message) = self.run_shim(&dir).await {
            let _ = self.owned.remove_dir_all(&dir);
            return Err(RuntimeError::StartFailed {
                pod: format!("{}/{}", sandbox.namespace, sandbox.pod_name),
                container: container.name.clone(),
                message,
            });
        }
        // Keep the newest earlier instance for `logs --previous`; older exited ones go.
        for (_, old) in instances.iter().rev().skip(1) {
            if let Ok(status) = self.status_of(old)
                && matches!(status.state, ContainerState::Exited { .. })
            {
                let _ = self.owned.remove_dir_all(&self.container_dir(old));
            }
        }
        Ok(id)
    }

    /// Start the shim and wait for its report: `Ok` once the container's command runs.
    async fn run_shim(&self, dir: &Path) -> Result<(), String> {
        let mut command = tokio::process::Command::new(&self.kemu_exe);
        command
            .arg("container-shim")
            .arg("--spec")
            .arg(dir.join(layout::SPEC))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: setsid is async-signal-safe. A session of its own keeps the shim out of the
        // kubelet's process group and terminal.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.kemu_exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(stdout).read_line(&mut line).await;
        if line.trim_end() == "ok" {
            // The shim is the kubelet's child until the kubelet exits: reap it when it ends.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok(());
        }
        let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
        let mut message = line.trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        }
        if message.is_empty() {
            message = format!("the container shim exited ({})", output.status);
        }
        Err(message)
    }

    async fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        self.spec(id)?;
        if dir.join(layout::EXIT).exists() {
            return Ok(());
        }
        let container: Option<ContainerRecord> =
            layout::read_json(&dir.join(layout::CONTAINER)).map_err(|e| io_error("read", id, e))?;
        let shim: Option<ProcessRecord> =
            layout::read_json(&dir.join(layout::SHIM)).map_err(|e| io_error("read", id, e))?;
        let (Some(container), Some(shim)) = (container, shim) else {
            return Ok(());
        };
        let main = container.process();
        let signal = |sig| main.signal(sig).map_err(|e| io_error("signal", id, e));
        if !shim.alive() {
            // The shim is gone (killed): nobody records the exit; make sure the process ends.
            return signal(libc::SIGKILL);
        }
        if !grace.is_zero() {
            signal(libc::SIGTERM)?;
            if wait_gone(&shim, grace).await {
                return Ok(());
            }
        }
        signal(libc::SIGKILL)?;
        if wait_gone(&shim, KILL_WAIT).await {
            return Ok(());
        }
        Err(io_error(
            "stop",
            id,
            std::io::Error::other("the container shim did not finish after SIGKILL"),
        ))
    }
}

/// Wait until a process (not necessarily our child) is gone; false on timeout.
async fn wait_gone(process: &ProcessRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process.alive() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn io_error(action: &'static str, id: &ContainerId, source: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        action,
        id: id.0.clone(),
        source,
    }
}

impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn create_and_start<'a>(
        &'a self,
        sandbox: &'a SandboxInfo,
        container: &'a ContainerConfig,
    ) -> BoxFuture<'a, Result<ContainerId, RuntimeError>> {
        Box::pin(self.start(sandbox, container))
    }

    fn stop<'a>(
        &'a self,
        id: &'a ContainerId,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.stop_container(id, grace))
    }

    fn status<'a>(
        &'a self,
        id: &'a ContainerId,
    ) -> BoxFuture<'a, Result<ContainerStatus, RuntimeError>> {
        Box::pin(async move { self.status_of(id) })
    }

    fn remove<'a>(&'a self, id: &'a ContainerId) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let dir = self.container_dir(id);
            if layout::parse_id(&id.0).is_none() || !dir.exists() {
                return Ok(());
            }
            // Kills what still runs, even a container whose shim was killed.
            match self.stop_container(id, Duration::ZERO).await {
                Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            match self.owned.remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error("remove", id, e))
                }
                _ => Ok(()),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>, RuntimeError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for id in self.ids() {
                match self.status_of(&id) {
                    Ok(status) => all.push(status),
                    // Removed meanwhile, or half-created by a start that is still running.
                    Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(all)
        })
    }

    fn logs<'a>(
        &'a self,
        id: &'a ContainerId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        Box::pin(async move {
            let spec = self.spec(id)?;
            let target = if options.previous {
                self.instances(&spec.pod_uid, &spec.container_name)
                    .into_iter()
                    .rfind(|(attempt, _)| *attempt < spec.attempt)
                    .map(|(_, id)| id)
                    .ok_or_else(|| RuntimeError::NoPrevious {
                        pod: format!("{}/{}", spec.namespace, spec.pod_name),
                        container: spec.container_name.clone(),
                    })?
            } else {
                id.clone()
            };
            let dir = self.container_dir(&target);
            let path = dir.join(layout::LOG);
            if !path.exists() {
                // Nothing logged yet: an empty log.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_error("read the log of", &target, e))?;
            }
            let finished_dir = dir.clone();
            let finished = Arc::new(move || {
                let shim: Option<ProcessRecord> =
                    layout::read_json(&finished_dir.join(layout::SHIM))
                        .ok()
                        .flatten();
                finished_dir.join(layout::EXIT).exists() || !shim.is_some_and(|s| s.alive())
            });
            logs::read_log(path, options, finished)
                .map_err(|e| io_error("read the log of", &target, e))
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a ContainerId,
        request: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, RuntimeError>> {
        Box::pin(async move {
            let status = self.status_of(id)?;
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
            let pid = status
                .pid
                .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
            exec::start(&self.kemu_exe, &self.container_dir(id), &id.0, pid, request)
        })
    }
}
