//! `kemu container-shim --spec <dir>/spec.json`: the process that owns one container.
//!
//! The runtime starts it in its own session and reads one line from its stdout: `ok` once the
//! container's command has been executed, or the reason it could not be. The shim then
//! - has joined the pod's network namespace and made a new PID namespace for its child, so the
//!   container's main process is PID 1 there (the child makes its own mount, UTS and IPC
//!   namespaces, see `init`), and written the id maps of the child's user namespace (see
//!   `userns`);
//! - forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to the container;
//! - writes the container's stdout and stderr to `container.log` in the CRI format;
//! - when the container ends (and with it, the kernel kills every process of its PID
//!   namespace), drains the pipes, writes `exit.json` and exits.
//!
//! It is single-threaded (poll + signalfd): forking from it is safe, and it stays small.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use super::init::{self, Executable};
use super::layout::{self, ContainerRecord, ExitRecord, ProcessRecord};
use super::spec::ShimSpec;
use super::userns::{self, Handshake};
use crate::runtime::logs;

/// Signals passed on to the container.
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Run the shim for the spec at `spec_path`.
pub fn main(spec_path: &Path) -> anyhow::Result<ExitCode> {
    let spec: ShimSpec = layout::read_json(spec_path)?
        .ok_or_else(|| anyhow::anyhow!("no spec at {}", spec_path.display()))?;
    let mut ready = io::stdout();
    let started = match start(&spec) {
        Ok(started) => started,
        Err(message) => {
            let _ = writeln!(ready, "{message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let _ = writeln!(ready, "ok");
    let _ = ready.flush();
    // From here on the shim's own output goes to shim.log, which closes the runtime's pipe.
    let log = owned_dir(&spec)
        .and_then(|dir| dir.open_append(&spec.dir.join(layout::SHIM_LOG)))
        .or_else(|_| File::options().write(true).open("/dev/null"))?;
    nix::unistd::dup2_stdout(&log)?;
    nix::unistd::dup2_stderr(&log)?;
    let exit = supervise(&spec, started);
    layout::write_json(&owned_dir(&spec)?, &spec.dir.join(layout::EXIT), &exit)?;
    Ok(ExitCode::SUCCESS)
}

/// The container's directory, where the shim writes its state files (through the guard).
fn owned_dir(spec: &ShimSpec) -> std::io::Result<crate::fsguard::OwnedDir> {
    Ok(crate::fsguard::OwnedDir::new(&spec.dir)?)
}

struct Started {
    child: Pid,
    stdout: OwnedFd,
    stderr: OwnedFd,
    signals: SignalFd,
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Join the pod, fork the container's PID 1 and wait until it has executed its command.
fn start(spec: &ShimSpec) -> Result<Started, String> {
    let netns = File::open(&spec.netns).map_err(|e| {
        format!(
            "open the pod's network namespace {}: {e}",
            spec.netns.display()
        )
    })?;
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(err("join the pod's network namespace"))?;
    // As Docker does for containers with their own network namespace: any user may bind
    // ports below 1024 (nginx as user 65534 on port 80).
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0") {
        eprintln!("warning: set ip_unprivileged_port_start in the pod: {e}");
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(err("unshare the PID namespace"))?;

    let (out_r, out_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    let (err_r, err_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    // Closed by a successful exec (O_CLOEXEC); carries the error otherwise.
    let (status_r, status_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    let handshake = Handshake::new().map_err(err("socketpair"))?;
    let exe = Executable::open(&spec.process.program)?;
    let dev_null = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(err("open /dev/null"))?;

    let mut blocked = SigSet::empty();
    for signal in FORWARDED {
        blocked.add(signal);
    }
    blocked.add(Signal::SIGCHLD);
    blocked.thread_block().map_err(err("block signals"))?;
    let signals = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(err("signalfd"))?;

    // SAFETY: the shim is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(err("fork"))? {
        ForkResult::Child => {
            let setup = nix::unistd::dup2_stdin(&dev_null)
                .and_then(|_| nix::unistd::dup2_stdout(&out_w))
                .and_then(|_| nix::unistd::dup2_stderr(&err_w));
            drop(handshake.shim);
            let message = match setup {
                Ok(()) => init::container_init(spec, exe, handshake.init),
                Err(e) => format!("set up stdio: {e}"),
            };
            let _ = File::from(status_w).write_all(message.as_bytes());
            // SAFETY: leave without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop((out_w, err_w, status_w, exe, dev_null, handshake.init));
            if let Err(message) = userns::map(handshake.shim, child, &spec.ids) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(message);
            }
            let mut message = String::new();
            let _ = File::from(status_r).read_to_string(&mut message);
            if !message.is_empty() {
                let _ = waitpid(child, None);
                return Err(message);
            }
            let container = ContainerRecord {
                pid: child.as_raw() as u32,
                start_ticks: ProcessRecord::of(child.as_raw() as u32)
                    .map(|r| r.start_ticks)
                    .unwrap_or(0),
                started_at: Timestamp::now(),
            };
            let shim = ProcessRecord::of(std::process::id()).map_err(err("read own start time"))?;
            let dir = owned_dir(spec).map_err(err("the container's directory"))?;
            layout::write_json(&dir, &spec.dir.join(layout::SHIM), &shim)
                .map_err(err("write shim.json"))?;
            layout::write_json(&dir, &spec.dir.join(layout::CONTAINER), &container)
                .map_err(err("write container.json"))?;
            Ok(Started {
                child,
                stdout: out_r,
                stderr: err_r,
                signals,
            })
        }
    }
}

/// A stream's bytes cut into CRI records.
struct LineWriter {
    stream: &'static str,
    partial: Vec<u8>,
}

impl LineWriter {
    fn feed(&mut self, data: &[u8], log: &mut File) {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.extend(logs::cri_record(
                    Timestamp::now(),
                    self.stream,
                    false,
                    &self.partial,
                ));
                self.partial.clear();
            } else {
                self.partial.push(b);
                if self.partial.len() >= logs::MAX_RECORD {
                    out.extend(logs::cri_record(
                        Timestamp::now(),
                        self.stream,
                        true,
                        &self.partial,
                    ));
                    self.partial.clear();
                }
            }
        }
        if !out.is_empty() {
            let _ = log.write_all(&out);
        }
    }

    fn finish(&mut self, log: &mut File) {
        if !self.partial.is_empty() {
            let _ = log.write_all(&logs::cri_record(
                Timestamp::now(),
                self.stream,
                false,
                &self.partial,
            ));
            self.partial.clear();
        }
    }
}

/// Copy output to the log and pass signals on until the container has ended.
fn supervise(spec: &ShimSpec, started: Started) -> ExitRecord {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.dir.join(layout::LOG))
        .unwrap_or_else(|_| File::create("/dev/null").expect("/dev/null"));
    let mut streams = [
        (
            Some(File::from(started.stdout)),
            LineWriter {
                stream: "stdout",
                partial: Vec::new(),
            },
        ),
        (
            Some(File::from(started.stderr)),
            LineWriter {
                stream: "stderr",
                partial: Vec::new(),
            },
        ),
    ];
    let mut status: Option<WaitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let open = streams.iter().filter(|(f, _)| f.is_some()).count();
        if status.is_some()
            && (open == 0 || exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)))
        {
            break;
        }
        let mut fds: Vec<libc::pollfd> = vec![libc::pollfd {
            fd: started.signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for (file, _) in &streams {
            fds.push(libc::pollfd {
                fd: file.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll on a valid array of pollfd; negative fds are ignored by the kernel.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        if n < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = started.signals.read_signal() {
                let signal = info.ssi_signo as i32;
                if signal == libc::SIGCHLD {
                    if let Ok(s) = waitpid(started.child, Some(WaitPidFlag::WNOHANG))
                        && s != WaitStatus::StillAlive
                    {
                        status = Some(s);
                        exited_at = Some(Instant::now());
                    }
                } else if status.is_none() {
                    // SAFETY: kill with plain integers, to our own child.
                    unsafe { libc::kill(started.child.as_raw(), signal) };
                }
            }
        }
        for (i, (file, writer)) in streams.iter_mut().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let Some(f) = file.as_mut() else { continue };
            match f.read(&mut buf) {
                Ok(0) | Err(_) => {
                    writer.finish(&mut log);
                    *file = None;
                }
                Ok(n) => writer.feed(&buf[..n], &mut log),
            }
        }
        // A SIGCHLD may have been merged with one already read: check directly too.
        if status.is_none()
            && let Ok(s) = waitpid(started.child, Some(WaitPidFlag::WNOHANG))
            && s != WaitStatus::StillAlive
        {
            status = Some(s);
            exited_at = Some(Instant::now());
        }
    }
    for (_, writer) in streams.iter_mut() {
        writer.finish(&mut log);
    }
    exit_record(status.expect("the loop ends once the child has exited"))
}

/// The recorded exit of a wait status.
pub fn exit_record(status: WaitStatus) -> ExitRecord {
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, signal, _) => (128 + signal as i32, Some(signal as i32)),
        _ => (255, None),
    };
    ExitRecord {
        exit_code,
        signal,
        finished_at: Timestamp::now(),
        reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
    }
}
