//! `exec` in a running container.
//!
//! Joining a PID namespace only affects children, so the runtime starts a helper,
//! `kemu container-exec --dir <container dir> [--tty] -- cmd...`, which joins the container's
//! IPC, UTS, network, PID and mount namespaces (from `/proc/<pid>/ns/*`), forks the command,
//! which joins the container's user namespace last (see `userns::join`) and takes the
//! container's user, capabilities, env and working directory; the helper passes signals on
//! and exits with the command's status. The helper itself stays in the host's user namespace
//! (and out of the container's PID namespace), where the pod cannot reach it. The caller wires the helper's stdio (pipes, or a
//! terminal it allocated, whose master it keeps for output and resizing).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::task::{Context, Poll, ready};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::init::{self, Executable};
use super::layout::{self, ContainerRecord};
use super::spec::{Program, ShimSpec};
use super::userns;
use crate::runtime::{ExecRequest, ExecSession, RuntimeError, TerminalSize};

/// The namespaces the helper joins, mount last (its paths change everything after it). The
/// command joins the user namespace after them: once in it, it could join no other.
const NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The body of `kemu container-exec`.
pub fn helper_main(dir: &Path, tty: bool, command: Vec<String>) -> anyhow::Result<ExitCode> {
    let spec: ShimSpec = layout::read_json(&dir.join(layout::SPEC))?
        .ok_or_else(|| anyhow::anyhow!("no container at {}", dir.display()))?;
    let container: ContainerRecord = layout::read_json(&dir.join(layout::CONTAINER))?
        .ok_or_else(|| anyhow::anyhow!("container {} has not started", spec.id))?;
    let Some(program) = command.first().cloned() else {
        anyhow::bail!("exec in container {}: no command given", spec.id);
    };
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{name}", container.pid);
        namespaces.push((File::open(&path)?, flag));
    }
    let user = File::open(format!("/proc/{}/ns/user", container.pid))?;
    // The files are open: if the PID was the container's, they are its namespaces.
    if !container.process().alive() {
        anyhow::bail!("container {} is not running", spec.id);
    }
    for (file, flag) in &namespaces {
        setns(file.as_fd(), *flag)?;
    }
    drop(namespaces);

    let mut process = spec.process.clone();
    process.program = Program::Host {
        name: program.clone(),
    };
    process.argv = command;
    if tty && !process.env.iter().any(|e| e.starts_with("TERM=")) {
        process.env.push("TERM=xterm".into());
    }

    let mut blocked = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        blocked.add(signal);
    }
    blocked.thread_block()?;
    let signals = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC)?;
    // SAFETY: the helper is single-threaded.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let message = match userns::join(&user) {
                Ok(()) => init::exec_process(&process, Executable::Host(program), tty),
                Err(e) => e,
            };
            eprintln!("exec failed: unable to start container process: {message}");
            let code = if message.contains("not found") {
                127
            } else {
                126
            };
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(user);
            loop {
                let Some(info) = signals.read_signal()? else {
                    continue;
                };
                let signal = info.ssi_signo as i32;
                if signal != libc::SIGCHLD {
                    // SAFETY: kill with plain integers, to our own child.
                    unsafe { libc::kill(child.as_raw(), signal) };
                    continue;
                }
                match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))? {
                    WaitStatus::Exited(_, code) => return Ok(ExitCode::from(code as u8)),
                    WaitStatus::Signaled(_, signal, _) => {
                        return Ok(ExitCode::from(128 + signal as u8));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Start `request` in the container whose directory is `dir`, through `kemu container-exec`.
pub fn start(
    kemu_exe: &Path,
    dir: &Path,
    id: &str,
    container_pid: u32,
    request: ExecRequest,
) -> Result<ExecSession, RuntimeError> {
    let io_err = |action| {
        move |source| RuntimeError::Io {
            action,
            id: id.to_string(),
            source,
        }
    };
    let mut command = tokio::process::Command::new(kemu_exe);
    command.arg("container-exec").arg("--dir").arg(dir);
    if request.tty {
        command.arg("--tty");
    }
    command.arg("--").args(&request.command).env_clear();

    if request.tty {
        let (master, slave) =
            container_terminal(container_pid).map_err(io_err("allocate a terminal"))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        command
            .stdin(dup(&slave).map_err(io_err("allocate a terminal"))?)
            .stdout(dup(&slave).map_err(io_err("allocate a terminal"))?)
            .stderr(Stdio::from(slave));
        let mut child = command.spawn().map_err(io_err("exec in"))?;
        let reader =
            Pty::new(master.try_clone().map_err(io_err("exec in"))?).map_err(io_err("exec in"))?;
        let writer =
            Pty::new(master.try_clone().map_err(io_err("exec in"))?).map_err(io_err("exec in"))?;
        let id = id.to_string();
        Ok(ExecSession {
            stdin: request
                .stdin
                .then(|| Box::pin(writer) as Pin<Box<dyn AsyncWrite + Send>>),
            stdout: Box::pin(reader),
            stderr: None,
            resize: Some(Box::new(move |size: TerminalSize| resize(&master, size))),
            exit: Box::pin(async move { wait(&mut child, &id).await }),
        })
    } else {
        command
            .stdin(if request.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(io_err("exec in"))?;
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::pin(s) as Pin<Box<dyn AsyncWrite + Send>>);
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let id = id.to_string();
        Ok(ExecSession {
            stdin,
            stdout: Box::pin(stdout),
            stderr: Some(Box::pin(stderr)),
            resize: None,
            exit: Box::pin(async move { wait(&mut child, &id).await }),
        })
    }
}

async fn wait(child: &mut tokio::process::Child, id: &str) -> Result<i32, RuntimeError> {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().await.map_err(|source| RuntimeError::Io {
        action: "wait for exec in",
        id: id.to_string(),
        source,
    })?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255))
}

/// A terminal from the container's own devpts (through `/proc/<pid>/root`), so that `tty`
/// inside shows a `/dev/pts/N` the container can see: (master, slave).
fn container_terminal(container_pid: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/{container_pid}/root/dev/ptmx"))?
        .into();
    // SAFETY: unlockpt and TIOCGPTPEER on a terminal master we own; the new fd is owned below.
    unsafe {
        if libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((master, OwnedFd::from_raw_fd(slave)))
    }
}

fn resize(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One end of a terminal master, readable and writable without blocking the runtime.
struct Pty(AsyncFd<OwnedFd>);

impl Pty {
    fn new(fd: OwnedFd) -> io::Result<Pty> {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: the OwnedFd stays open, and the same fd, for as long as the AsyncFd owns it.
        Ok(Pty(unsafe { AsyncFd::register(fd) }?))
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: read into the unfilled part of the buffer.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The terminal's last user went away: that is its end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: write from a valid slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
