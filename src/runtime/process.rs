//! The `process` runtime: each container is a process tree run by a `kemu container-shim`
//! (see `shim`). Built-in images run the kemu binary itself (`kemu image nginx ...`); any
//! other image runs the host command its `command:` names, inside the container's read-only
//! view of the host's filesystem.
//!
//! On-disk layout, under the kubelet's root directory:
//!
//! ```text
//! pods/<pod uid>/hosts, resolv.conf, hostname        the pod's /etc files
//! pods/<pod uid>/containers/<name>/<attempt>/
//!     spec.json        what the shim was asked to run
//!     shim.json        the shim's PID and start time
//!     container.json   the container's PID 1 (host PID), start time
//!     exit.json        how it ended (written by the shim)
//!     log              CRI-format stdout/stderr
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use jiff::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::shim::{EXIT_FILE, PROCESS_FILE, ProcessFile, SHIM_FILE, SPEC_FILE, ShimSpec};
use super::{
    ContainerConfig, ContainerId, ContainerInfo, ContainerState, Runtime, RuntimeError, SandboxInfo,
};
use crate::images::{BuiltinImage, builtin_list};
use crate::lab::state::{ProcessRecord, write_atomic};

/// The user an unprivileged container runs as (`nobody`).
pub const DEFAULT_USER: u32 = 65534;

/// The process runtime of one kubelet.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    kemu: PathBuf,
}

impl ProcessRuntime {
    /// `root` is the kubelet's directory; `kemu` the binary built-in images run.
    pub fn new(root: &Path, kemu: &Path) -> ProcessRuntime {
        ProcessRuntime {
            root: root.to_path_buf(),
            kemu: kemu.to_path_buf(),
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn dir(&self, id: &ContainerId) -> PathBuf {
        let mut parts = id.0.splitn(3, '/');
        let (uid, name, attempt) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        self.pod_dir(uid)
            .join("containers")
            .join(name)
            .join(attempt)
    }

    /// The command line of a container: a built-in image's program, or the host command.
    pub fn argv(&self, c: &ContainerConfig) -> Result<Vec<String>, RuntimeError> {
        let builtin = BuiltinImage::resolve(&c.image);
        let runs_image_program =
            c.command.is_empty() || builtin.is_some_and(|b| b.is_entrypoint(&c.command[0]));
        match builtin {
            Some(image) if runs_image_program => {
                let mut argv = vec![
                    self.kemu.display().to_string(),
                    "image".into(),
                    image.name().into(),
                ];
                match image {
                    BuiltinImage::Nginx => {
                        argv.extend(["--image".to_string(), c.image.clone()]);
                        for port in &c.ports {
                            argv.extend(["--port".to_string(), port.to_string()]);
                        }
                    }
                    // agnhost's subcommand and flags come from args (`command: [/agnhost]` or none).
                    BuiltinImage::Agnhost | BuiltinImage::Pause => {
                        argv.extend(c.args.iter().cloned())
                    }
                }
                Ok(argv)
            }
            _ if c.command.is_empty() => Err(RuntimeError::ImageNotFound {
                image: c.image.clone(),
                builtin: builtin_list(),
            }),
            _ => Ok(c.command.iter().chain(&c.args).cloned().collect()),
        }
    }

    fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn process(&self, id: &ContainerId) -> Option<ProcessFile> {
        Self::read(&self.dir(id).join(PROCESS_FILE))
    }

    fn running(&self, id: &ContainerId) -> Option<ProcessFile> {
        let p = self.process(id)?;
        let record = ProcessRecord {
            pid: p.pid,
            start_time: p.start_time,
            what: String::new(),
        };
        record.is_alive().then_some(p)
    }

    fn shim_alive(&self, id: &ContainerId) -> bool {
        Self::read::<ProcessRecord>(&self.dir(id).join(SHIM_FILE)).is_some_and(|r| r.is_alive())
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "kemu-process"
    }

    fn start(
        &self,
        sandbox: &SandboxInfo,
        c: &ContainerConfig,
    ) -> Result<ContainerId, RuntimeError> {
        let argv = self.argv(c)?;
        let pod_dir = self.pod_dir(&sandbox.pod_uid);
        std::fs::create_dir_all(&pod_dir).context("create the pod directory")?;
        for (name, contents) in [
            ("hosts", &sandbox.hosts),
            ("resolv.conf", &sandbox.resolv_conf),
            ("hostname", &format!("{}\n", sandbox.hostname)),
        ] {
            write_atomic(&pod_dir.join(name), contents.as_bytes())
                .context("write the pod's /etc files")?;
        }
        let id = ContainerId(format!("{}/{}/{}", sandbox.pod_uid, c.name, c.attempt));
        let dir = self.dir(&id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).context("clear an old container directory")?;
        }
        std::fs::create_dir_all(&dir).context("create the container directory")?;
        let uid = c.run_as_user.unwrap_or(DEFAULT_USER);
        let spec = ShimSpec {
            dir: dir.clone(),
            netns: sandbox.netns_path.clone(),
            hostname: sandbox.hostname.clone(),
            argv,
            env: c.env.clone(),
            cwd: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            uid,
            gid: c
                .run_as_group
                .unwrap_or(if uid == 0 { 0 } else { DEFAULT_USER }),
            hosts: pod_dir.join("hosts"),
            resolv_conf: pod_dir.join("resolv.conf"),
            hostname_file: pod_dir.join("hostname"),
            log: dir.join("log"),
        };
        let spec_path = dir.join(SPEC_FILE);
        write_atomic(
            &spec_path,
            serde_json::to_string_pretty(&spec)
                .context("encode the spec")?
                .as_bytes(),
        )
        .context("write the container spec")?;
        let shim_log =
            std::fs::File::create(dir.join("shim.log")).context("create the shim log")?;
        // The shim forks and its first process exits at once: this wait is short and leaves
        // no zombie; the long-lived shim is nobody's child but its reaper's.
        let status = Command::new(&self.kemu)
            .arg("container-shim")
            .arg("--spec")
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shim_log)
            .status()
            .context("start the container shim")?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
            return Err(anyhow::anyhow!("the container shim failed: {}", log.trim()).into());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join(PROCESS_FILE).exists() && !dir.join(EXIT_FILE).exists() {
            if Instant::now() >= deadline {
                return Err(anyhow::anyhow!("the container did not start within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(id)
    }

    fn state(&self, id: &ContainerId) -> ContainerState {
        let dir = self.dir(id);
        if let Some(exited) = Self::read::<ContainerState>(&dir.join(EXIT_FILE)) {
            return exited;
        }
        if let Some(p) = self.running(id) {
            return ContainerState::Running {
                pid: p.pid,
                started_at: p.started_at,
            };
        }
        if self.shim_alive(id) {
            // Started but not reported yet, or exited and the shim is writing exit.json.
            return match self.process(id) {
                Some(p) => ContainerState::Running {
                    pid: p.pid,
                    started_at: p.started_at,
                },
                None => ContainerState::Created,
            };
        }
        ContainerState::Exited {
            exit_code: 255,
            signal: None,
            reason: Some("Unknown".into()),
            message: Some("the container's shim is gone and left no exit status".into()),
            started_at: self.process(id).map(|p| p.started_at),
            finished_at: Timestamp::now(),
        }
    }

    fn stop(&self, id: &ContainerId, grace: Duration) {
        let Some(p) = self.running(id) else {
            return;
        };
        let pid = Pid::from_raw(p.pid);
        let done = || self.running(id).is_none();
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !done() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        // Give the shim a moment to record the exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (!done() || (self.shim_alive(id) && !self.dir(id).join(EXIT_FILE).exists()))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn remove(&self, id: &ContainerId) {
        let _ = std::fs::remove_dir_all(self.dir(id));
    }

    fn list(&self) -> Vec<ContainerInfo> {
        let mut out = Vec::new();
        let Ok(pods) = std::fs::read_dir(self.root.join("pods")) else {
            return out;
        };
        for pod in pods.flatten() {
            let uid = pod.file_name().to_string_lossy().into_owned();
            let Ok(names) = std::fs::read_dir(pod.path().join("containers")) else {
                continue;
            };
            for name in names.flatten() {
                let name_str = name.file_name().to_string_lossy().into_owned();
                let Ok(attempts) = std::fs::read_dir(name.path()) else {
                    continue;
                };
                for attempt in attempts.flatten() {
                    let Ok(n) = attempt.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let id = ContainerId(format!("{uid}/{name_str}/{n}"));
                    let state = self.state(&id);
                    out.push(ContainerInfo {
                        id,
                        pod_uid: uid.clone(),
                        name: name_str.clone(),
                        attempt: n,
                        state,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn remove_pod(&self, pod_uid: &str) {
        let _ = std::fs::remove_dir_all(self.pod_dir(pod_uid));
    }

    fn log_path(&self, id: &ContainerId) -> PathBuf {
        self.dir(id).join("log")
    }

    fn exec_command(&self, id: &ContainerId, cmd: &[String], tty: bool) -> anyhow::Result<Command> {
        let p = self.running(id).context("container is not running")?;
        let mut command = Command::new(&self.kemu);
        command
            .arg("container-exec")
            .arg("--pid")
            .arg(p.pid.to_string());
        if tty {
            command.arg("--tty");
        }
        command.arg("--").args(cmd);
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> ProcessRuntime {
        ProcessRuntime::new(Path::new("/tmp/kubelet"), Path::new("/usr/local/bin/kemu"))
    }

    fn container(image: &str, command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: "c".into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ports: vec![80],
            ..Default::default()
        }
    }

    #[test]
    fn built_in_images_run_kemu_and_others_their_command() {
        let rt = runtime();
        assert_eq!(
            rt.argv(&container("nginx", &[], &[])).unwrap(),
            [
                "/usr/local/bin/kemu",
                "image",
                "nginx",
                "--image",
                "nginx",
                "--port",
                "80"
            ]
        );
        assert_eq!(
            rt.argv(&container(
                "registry.k8s.io/e2e-test-images/agnhost:2.53",
                &[],
                &["netexec", "--http-port=8080"]
            ))
            .unwrap(),
            [
                "/usr/local/bin/kemu",
                "image",
                "agnhost",
                "netexec",
                "--http-port=8080"
            ]
        );
        assert_eq!(
            rt.argv(&container(
                "registry.k8s.io/e2e-test-images/agnhost:2.53",
                &["/agnhost"],
                &["serve-hostname"]
            ))
            .unwrap(),
            ["/usr/local/bin/kemu", "image", "agnhost", "serve-hostname"]
        );
        // A shell in a built-in image runs the host's shell.
        assert_eq!(
            rt.argv(&container("nginx", &["sh", "-c"], &["echo hi"]))
                .unwrap(),
            ["sh", "-c", "echo hi"]
        );
        assert_eq!(
            rt.argv(&container("debian", &["sleep", "3600"], &[]))
                .unwrap(),
            ["sleep", "3600"]
        );
        let err = rt
            .argv(&container("redis:7", &[], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"redis:7\"")
                && err.contains("nginx, registry.k8s.io/e2e-test-images/agnhost"),
            "{err}"
        );
    }
}
