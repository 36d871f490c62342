//! The container shim (`kemu container-shim --spec FILE`) and `kemu container-exec`.
//!
//! The kubelet starts one shim per container. The shim detaches (so it outlives a kubelet
//! restart), joins the pod's network namespace, unshares mount, UTS, IPC and PID namespaces and
//! forks the container's first process, which becomes PID 1 of the new PID namespace, builds the
//! container's filesystem view and execs the command:
//!
//! - the host's root filesystem, every mount read-only; private tmpfs on `/tmp`, `/var/tmp`,
//!   `/run` and `/dev/shm`; a minimal `/dev` (null, zero, full, random, urandom, tty, a private
//!   devpts); `/proc` of the new PID namespace with `/proc/sys` read-only; `/sys` of the pod's
//!   network namespace, read-only; the pod's `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`;
//! - hostname = the pod's name; user 65534 unless `runAsUser` says otherwise; as root, only
//!   Docker's default capabilities (no CAP_SYS_ADMIN: it cannot remount anything); no new
//!   privileges.
//!
//! The shim copies the container's stdout and stderr into the CRI log file, forwards SIGTERM,
//! SIGINT and SIGHUP, and records the exit status (`exit.json`) before it ends, so a kubelet
//! that was not running at the time still learns how the container ended.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use jiff::Timestamp;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, execve, fork, setsid};
use serde::{Deserialize, Serialize};

use super::ContainerState;
use super::logs::format_line;

/// Everything the shim needs, written by the runtime into the container's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimSpec {
    /// The container's directory (state files).
    pub dir: PathBuf,
    pub netns: PathBuf,
    pub hostname: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Files bind-mounted onto /etc/hosts, /etc/resolv.conf and /etc/hostname.
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    /// CRI log file.
    pub log: PathBuf,
}

/// The container's process, as `container.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessFile {
    pub pid: i32,
    pub start_time: u64,
    pub started_at: Timestamp,
}

/// Docker's default capabilities, the only ones a root container keeps.
const DEFAULT_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// File names inside a container's directory.
pub const SPEC_FILE: &str = "spec.json";
pub const SHIM_FILE: &str = "shim.json";
pub const PROCESS_FILE: &str = "container.json";
pub const EXIT_FILE: &str = "exit.json";

/// `kemu container-shim --spec FILE`. Returns only in the short-lived first process.
pub fn run(spec_path: &Path) -> anyhow::Result<()> {
    let spec: ShimSpec = serde_json::from_slice(
        &std::fs::read(spec_path).with_context(|| format!("read {}", spec_path.display()))?,
    )?;
    // Detach: the first process returns at once (the kubelet reaps it), the second lives on.
    // SAFETY: the shim is single-threaded here.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => return Ok(()),
        ForkResult::Child => {}
    }
    setsid()?;
    let me = crate::lab::state::ProcessRecord::of(std::process::id() as i32, "shim")
        .context("read own start time")?;
    crate::lab::state::write_atomic(
        &spec.dir.join(SHIM_FILE),
        serde_json::to_string(&me)?.as_bytes(),
    )?;
    let code = match supervise(&spec) {
        Ok(()) => 0,
        Err(e) => {
            let _ = write_exit(
                &spec,
                128,
                None,
                Some("StartError"),
                Some(&format!("{e:#}")),
                None,
            );
            1
        }
    };
    std::process::exit(code);
}

fn write_exit(
    spec: &ShimSpec,
    code: i32,
    signal: Option<i32>,
    reason: Option<&str>,
    message: Option<&str>,
    started_at: Option<Timestamp>,
) -> anyhow::Result<()> {
    let state = ContainerState::Exited {
        exit_code: code,
        signal,
        reason: reason.map(String::from),
        message: message.map(String::from),
        started_at,
        finished_at: Timestamp::now(),
    };
    crate::lab::state::write_atomic(
        &spec.dir.join(EXIT_FILE),
        serde_json::to_string(&state)?.as_bytes(),
    )?;
    Ok(())
}

/// Start the container and stay with it until it ends.
fn supervise(spec: &ShimSpec) -> anyhow::Result<()> {
    let netns =
        File::open(&spec.netns).with_context(|| format!("open {}", spec.netns.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("join the pod's network namespace")?;
    // The PID namespace applies to the next child only; the shim returns to its own afterwards
    // (a process whose children get another PID namespace cannot start threads). The mount
    // namespace is the child's alone, so the shim keeps seeing the kubelet's files.
    let own_pid_ns = File::open("/proc/self/ns/pid")?;
    unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID)
        .context("create the container's namespaces")?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Reports a failure to set up or exec; closed unread when exec succeeds.
    let (fail_r, fail_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let forwarded = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]);
    forwarded.thread_block()?;
    // Everything the child needs is prepared before the fork.
    let prepared = Prepared::new(spec)?;
    let started_at = Timestamp::now();
    // SAFETY: single-threaded; the child only makes syscalls and execs (or exits).
    let child = match unsafe { fork() }? {
        ForkResult::Child => {
            drop(out_r);
            drop(err_r);
            drop(fail_r);
            let err = container_init(&prepared, &out_w, &err_w, &forwarded);
            let mut fail = File::from(fail_w);
            let _ = fail.write_all(format!("{err:#}").as_bytes());
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(127) };
        }
        ForkResult::Parent { child } => child,
    };
    setns(&own_pid_ns, CloneFlags::CLONE_NEWPID).context("return to the shim's PID namespace")?;
    drop(out_w);
    drop(err_w);
    drop(fail_w);
    let record = ProcessFile {
        pid: child.as_raw(),
        start_time: crate::lab::state::process_start_time(child.as_raw()).unwrap_or(0),
        started_at,
    };
    crate::lab::state::write_atomic(
        &spec.dir.join(PROCESS_FILE),
        serde_json::to_string(&record)?.as_bytes(),
    )?;

    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?,
    ));
    let readers = [(out_r, "stdout"), (err_r, "stderr")].map(|(fd, stream)| {
        let log = log.clone();
        std::thread::spawn(move || copy_log(fd, stream, &log))
    });
    std::thread::spawn(move || {
        // Forward termination signals to the container's PID 1.
        while let Ok(sig) = forwarded.wait() {
            let _ = kill(child, sig);
        }
    });
    let mut failure = String::new();
    let _ = File::from(fail_r).read_to_string(&mut failure);
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig as i32)),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for r in readers {
        let _ = r.join();
    }
    if failure.is_empty() {
        write_exit(spec, status.0, status.1, None, None, Some(started_at))
    } else {
        let mut log = log.lock().expect("log");
        let _ = log.write_all(format_line(Timestamp::now(), "stderr", false, &failure).as_bytes());
        write_exit(
            spec,
            status.0,
            status.1,
            Some("StartError"),
            Some(&failure),
            Some(started_at),
        )
    }
}

/// Copy one stream into the CRI log, line by line (long lines are split as partial lines).
fn copy_log(fd: OwnedFd, stream: &str, log: &Mutex<File>) {
    const MAX_LINE: usize = 16 * 1024;
    let mut reader = BufReader::new(File::from(fd));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = buf[n - 1] == b'\n';
        let text = String::from_utf8_lossy(if full { &buf[..n - 1] } else { &buf[..n] });
        let line = format_line(Timestamp::now(), stream, !full, &text);
        if let Ok(mut log) = log.lock() {
            let _ = log.write_all(line.as_bytes());
        }
    }
}

/// What the container's first process needs, allocated before the fork.
struct Prepared {
    argv0: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    uid: Uid,
    gid: Gid,
    hostname: String,
    hosts: PathBuf,
    resolv_conf: PathBuf,
    hostname_file: PathBuf,
    /// Mount points to remount read-only (every mount of the host).
    host_mounts: Vec<PathBuf>,
}

impl Prepared {
    fn new(spec: &ShimSpec) -> anyhow::Result<Prepared> {
        anyhow::ensure!(!spec.argv.is_empty(), "the container has no command");
        let path = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
        let program = &spec.argv[0];
        let resolved = if program.contains('/') {
            PathBuf::from(program)
        } else {
            path.split(':')
                .map(|dir| Path::new(dir).join(program))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow::anyhow!("exec: {program:?}: executable file not found in $PATH")
                })?
        };
        let mut env: Vec<CString> = Vec::new();
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            env.push(CString::new(format!("PATH={path}"))?);
        }
        if !spec.env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push(CString::new(format!("HOSTNAME={}", spec.hostname))?);
        }
        if !spec.env.iter().any(|(k, _)| k == "HOME") {
            env.push(CString::new(if spec.uid == 0 {
                "HOME=/root"
            } else {
                "HOME=/"
            })?);
        }
        for (k, v) in &spec.env {
            env.push(CString::new(format!("{k}={v}"))?);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        let host_mounts = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|p| PathBuf::from(unescape_mount(p)))
            .collect();
        Ok(Prepared {
            argv0: CString::new(resolved.as_os_str().as_encoded_bytes())?,
            argv: spec
                .argv
                .iter()
                .map(|a| CString::new(a.as_str()))
                .collect::<Result<_, _>>()?,
            env,
            cwd: CString::new(spec.cwd.as_str())?,
            uid: Uid::from_raw(spec.uid),
            gid: Gid::from_raw(spec.gid),
            hostname: spec.hostname.clone(),
            hosts: spec.hosts.clone(),
            resolv_conf: spec.resolv_conf.clone(),
            hostname_file: spec.hostname_file.clone(),
            host_mounts,
        })
    }
}

/// `/proc/self/mountinfo` escapes spaces and a few other bytes as `\NNN` octal.
fn unescape_mount(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(u8::from_str_radix(&path[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// In the container's first process (PID 1 of its PID namespace): build the filesystem view,
/// drop privileges, exec. Returns only on failure.
fn container_init(p: &Prepared, out: &OwnedFd, err: &OwnedFd, forwarded: &SigSet) -> anyhow::Error {
    match setup(p, out, err, forwarded) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn setup(
    p: &Prepared,
    out: &OwnedFd,
    err: &OwnedFd,
    forwarded: &SigSet,
) -> anyhow::Result<std::convert::Infallible> {
    let none = None::<&str>;
    unshare(CloneFlags::CLONE_NEWNS).context("create the container's mount namespace")?;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context("make mounts private")?;
    // Remount every host mount read-only before adding the container's own writable ones.
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for m in &p.host_mounts {
        if m.starts_with("/proc") || m.starts_with("/dev") || m.starts_with("/sys") {
            continue;
        }
        let flags = ro | current_flags(m);
        let _ = mount(none, m.as_path(), none, flags, none);
    }
    // The pod's /etc files, bound before /tmp and /run are covered (they may live there).
    for (source, target) in [
        (&p.hosts, "/etc/hosts"),
        (&p.resolv_conf, "/etc/resolv.conf"),
        (&p.hostname_file, "/etc/hostname"),
    ] {
        if Path::new(target).exists() {
            mount(Some(source.as_path()), target, none, MsFlags::MS_BIND, none)
                .with_context(|| format!("bind {target}"))?;
            mount(none, target, none, ro, none)?;
        }
    }
    let tmp = |target: &str, mode: &str| -> anyhow::Result<()> {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode={mode},size=64m").as_str()),
        )
        .with_context(|| format!("mount a tmpfs on {target}"))
    };
    tmp("/run", "755")?;
    // A minimal /dev: the host's device nodes are bound in from a staging copy of /dev.
    std::fs::create_dir("/run/.host-dev")?;
    mount(
        Some("/dev"),
        "/run/.host-dev",
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .context("stage /dev")?;
    tmp("/dev", "755")?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = format!("/dev/{node}");
        File::create(&target)?;
        mount(
            Some(format!("/run/.host-dev/{node}").as_str()),
            target.as_str(),
            none,
            MsFlags::MS_BIND,
            none,
        )
        .with_context(|| format!("bind {target}"))?;
    }
    std::fs::create_dir("/dev/pts")?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .context("mount devpts")?;
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")?;
    std::fs::create_dir("/dev/shm")?;
    tmp("/dev/shm", "1777")?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, format!("/dev/{link}"))?;
    }
    umount2("/run/.host-dev", MntFlags::MNT_DETACH)?;
    std::fs::remove_dir("/run/.host-dev")?;
    tmp("/tmp", "1777")?;
    if Path::new("/var/tmp").is_dir() {
        tmp("/var/tmp", "1777")?;
    }
    // /proc of the new PID namespace, with /proc/sys read-only; /sys of the pod's network.
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .context("mount /proc")?;
    mount(Some("/proc/sys"), "/proc/sys", none, MsFlags::MS_BIND, none)?;
    mount(
        none,
        "/proc/sys",
        none,
        ro | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )?;
    let _ = umount2("/sys", MntFlags::MNT_DETACH);
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .context("mount /sys")?;
    nix::unistd::sethostname(&p.hostname).context("set the hostname")?;

    // stdio: /dev/null in, the shim's pipes out.
    let null = File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(out)?;
    nix::unistd::dup2_stderr(err)?;

    drop_privileges(p.uid, p.gid)?;
    nix::unistd::chdir(p.cwd.as_c_str()).with_context(|| format!("chdir to {:?}", p.cwd))?;
    forwarded.thread_unblock()?;
    let never = execve(&p.argv0, &p.argv, &p.env).with_context(|| format!("exec {:?}", p.argv0))?;
    Ok(never)
}

/// The flags of a mount that must be kept when remounting it read-only.
fn current_flags(path: &Path) -> MsFlags {
    let Ok(stat) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = stat.flags();
    let mut flags = MsFlags::empty();
    use nix::sys::statvfs::FsFlags;
    for (have, want) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= want;
        }
    }
    flags
}

/// Become `uid:gid`; a root container keeps only Docker's default capabilities; never gain
/// privileges through exec.
pub fn drop_privileges(uid: Uid, gid: Gid) -> anyhow::Result<()> {
    use caps::{CapSet, Capability};
    let keep: std::collections::HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    nix::unistd::setgroups(&[gid]).context("setgroups")?;
    nix::unistd::setgid(gid).context("setgid")?;
    nix::unistd::setuid(uid).context("setuid")?;
    if uid.is_root() {
        caps::set(None, CapSet::Effective, &keep)?;
        caps::set(None, CapSet::Permitted, &keep)?;
        caps::set(None, CapSet::Inheritable, &Default::default())?;
    }
    caps::clear(None, CapSet::Ambient).ok();
    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    Ok(())
}

/// `kemu container-exec --pid PID [--tty] -- CMD...`: run a command inside a running
/// container's namespaces, as its user and with its environment; exits with its status.
pub fn exec(pid: i32, tty: bool, argv: &[String]) -> anyhow::Result<i32> {
    anyhow::ensure!(!argv.is_empty(), "no command given");
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let status =
        std::fs::read_to_string(proc.join("status")).context("the container is not running")?;
    let id = |key: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(65534)
    };
    let (uid, gid) = (id("Uid:"), id("Gid:"));
    let environ = std::fs::read(proc.join("environ")).unwrap_or_default();
    let env: Vec<CString> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| CString::new(v).ok())
        .collect();
    let path = env
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("PATH=").map(String::from))
        .next()
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_else(|_| "/".into());
    let namespaces: Vec<(File, CloneFlags)> = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]
    .into_iter()
    .map(|(name, flag)| Ok((File::open(proc.join("ns").join(name))?, flag)))
    .collect::<std::io::Result<_>>()
    .context("open the container's namespaces")?;
    for (file, flag) in &namespaces {
        setns(file, *flag).with_context(|| format!("join the container's {flag:?} namespace"))?;
    }
    let program = &argv[0];
    let resolved = if program.contains('/') {
        PathBuf::from(program)
    } else {
        path.split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!("exec: {program:?}: executable file not found in $PATH")
            })?
    };
    let argv0 = CString::new(resolved.as_os_str().as_encoded_bytes())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let cwd = CString::new(cwd.as_os_str().as_encoded_bytes())?;
    // Joining a PID namespace applies to children: fork once more.
    // SAFETY: single-threaded process.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let result = (|| -> anyhow::Result<std::convert::Infallible> {
                if tty {
                    setsid()?;
                    // SAFETY: TIOCSCTTY on our own stdin, which the caller made a pty.
                    unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
                }
                drop_privileges(Uid::from_raw(uid), Gid::from_raw(gid))?;
                let _ = nix::unistd::chdir(cwd.as_c_str());
                Ok(execve(&argv0, &args, &env)?)
            })();
            let Err(e) = result;
            eprintln!("{e:#}");
            // SAFETY: leave without running destructors.
            unsafe { libc::_exit(126) };
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        },
    }
}
