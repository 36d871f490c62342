//! The code that turns a forked process into a container process: the container's PID 1
//! (filesystem and hostname as host root, then the pod's user namespace, the user, and exec)
//! and the commands `exec` starts in it (user namespace, user, then exec). It runs between
//! fork and exec of a single-threaded process, so it may allocate.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::SigSet;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chdir, setgid, setgroups, sethostname, setuid};

use super::caps;
use super::spec::{DEFAULT_PATH, MountStep, ProcessSpec, Program, ShimSpec, find_in_path};
use super::userns;

/// An error with what was being done.
pub type InitError = String;

fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, InitError> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// The program to execute, opened where it must be: the kemu binary before the container's
/// mounts hide or change paths.
pub enum Executable {
    Fd(OwnedFd),
    Host(String),
}

impl Executable {
    /// Open the spec's program (call in the host's mount namespace).
    pub fn open(program: &Program) -> Result<Executable, InitError> {
        match program {
            Program::Kemu { exe } => {
                let file = ctx(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(exe),
                    || format!("open {}", exe.display()),
                )?;
                Ok(Executable::Fd(file.into()))
            }
            Program::Host { name } => Ok(Executable::Host(name.clone())),
        }
    }
}

/// Become the container's PID 1: own mount, UTS and IPC namespaces, the mount plan, the
/// hostname (all as host root), then the pod's user namespace (`userns::enter`, through the
/// shim at the other end of `handshake`), the user and the program. Returns only on failure.
pub fn container_init(spec: &ShimSpec, exe: Executable, handshake: UnixStream) -> InitError {
    match setup_container(spec).and_then(|()| userns::enter(handshake)) {
        Ok(()) => exec_process(&spec.process, exe, false),
        Err(e) => e,
    }
}

fn setup_container(spec: &ShimSpec) -> Result<(), InitError> {
    ctx(
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC),
        || "unshare mount, UTS and IPC namespaces".into(),
    )?;
    ctx(sethostname(&spec.hostname), || {
        format!("set hostname {}", spec.hostname)
    })?;
    // Files and directories bound later may sit under a directory the plan hides (/run,
    // /tmp), or in the host's tree that an image's `pivot_root` leaves: take detached copies
    // of them now and attach those.
    let mut sources: Vec<(PathBuf, OwnedFd)> = Vec::new();
    for step in &spec.mounts {
        if let MountStep::BindFile { source, .. } | MountStep::BindDir { source, .. } = step {
            sources.push((source.clone(), super::rootfs::clone_tree(source)?));
        }
    }
    // SAFETY: umask only changes this process's file mode mask.
    unsafe { libc::umask(0o022) };
    for step in &spec.mounts {
        apply_mount(step, &mut sources)?;
    }
    Ok(())
}

const NO_SUID_DEV_EXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn mnt(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    ctx(mount(source, target, fstype, flags, data), || {
        format!(
            "mount {} on {target}",
            fstype.or(source).unwrap_or("(remount)")
        )
    })
}

fn apply_mount(step: &MountStep, sources: &mut Vec<(PathBuf, OwnedFd)>) -> Result<(), InitError> {
    match step {
        MountStep::MakePrivate => mnt(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
        MountStep::ReadOnlyRoot => read_only_tree("/"),
        MountStep::Tmpfs {
            target,
            mode,
            size,
            noexec,
            owner,
        } => {
            if !Path::new(target).is_dir() {
                return Ok(());
            }
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            let data = format!("mode={mode},size={size},uid={owner},gid={owner}");
            mnt(Some("tmpfs"), target, Some("tmpfs"), flags, Some(&data))
        }
        MountStep::Dev => minimal_dev(),
        MountStep::Proc => mnt(Some("proc"), "/proc", Some("proc"), NO_SUID_DEV_EXEC, None),
        MountStep::Sysfs { read_only } => {
            let mut flags = NO_SUID_DEV_EXEC;
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            mnt(Some("sysfs"), "/sys", Some("sysfs"), flags, None)
        }
        MountStep::ReadOnly { path } => {
            if !Path::new(path).exists() {
                return Ok(());
            }
            mnt(
                Some(path),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            mnt(
                None,
                path,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | NO_SUID_DEV_EXEC,
                None,
            )
        }
        MountStep::Mask { path } => {
            if !Path::new(path).exists() {
                return Ok(());
            }
            mnt(Some("/dev/null"), path, None, MsFlags::MS_BIND, None)
        }
        MountStep::ImageRoot {
            layers,
            dir,
            ids,
            make_dirs,
        } => super::rootfs::enter_image_root(layers, dir, ids, make_dirs),
        MountStep::BindDir {
            source,
            target,
            read_only,
        } => {
            let tree = taken(sources, source)?;
            // A volume's `subPath` may name a file: its mount point is a file too.
            let is_dir = nix::sys::stat::fstat(&tree)
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(true);
            if is_dir && !Path::new(target).is_dir() {
                ctx(
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(target),
                    || format!("create the mount point {target}"),
                )?;
            } else if !is_dir && !Path::new(target).exists() {
                if let Some(parent) = Path::new(target).parent() {
                    ctx(
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o755)
                            .create(parent),
                        || format!("create the mount point's directory for {target}"),
                    )?;
                }
                ctx(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(target),
                    || format!("create the mount point {target}"),
                )?;
            }
            super::rootfs::attach_tree(&tree, target)?;
            let mut flags =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *read_only {
                flags |= MsFlags::MS_RDONLY;
            }
            mnt(None, target, None, flags, None)
        }
        MountStep::BindFile { source, target } => {
            let tree = taken(sources, source)?;
            let target = bind_target(target)?;
            let target = target.to_string_lossy();
            super::rootfs::attach_tree(&tree, &target)?;
            mnt(
                None,
                &target,
                None,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_BIND
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                None,
            )
        }
    }
}

/// The detached copy of `source` (each is attached once).
fn taken(sources: &mut Vec<(PathBuf, OwnedFd)>, source: &Path) -> Result<OwnedFd, InitError> {
    let at = sources
        .iter()
        .position(|(s, _)| s == source)
        .ok_or_else(|| format!("{} was not opened", source.display()))?;
    Ok(sources.remove(at).1)
}

/// Follow a symlinked bind target (`/etc/resolv.conf` -> `../run/...`); create the final file
/// if it is missing (possible only inside the container's own tmpfs).
fn bind_target(target: &str) -> Result<PathBuf, InitError> {
    let mut path = PathBuf::from(target);
    for _ in 0..16 {
        match std::fs::read_link(&path) {
            Ok(link) => {
                path = path.parent().unwrap_or(Path::new("/")).join(link);
            }
            Err(_) => break,
        }
    }
    if !path.exists() {
        if let Some(parent) = path.parent() {
            ctx(std::fs::create_dir_all(parent), || {
                format!("create {}", parent.display())
            })?;
        }
        ctx(File::create(&path), || format!("create {}", path.display()))?;
    }
    Ok(path)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Make every mount under `path` read-only in one call (Linux 5.12+).
fn read_only_tree(path: &str) -> Result<(), InitError> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: mount_setattr reads a NUL-terminated path and an attribute struct of the given
    // size, both valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "make {path} read-only (mount_setattr): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A `/dev` with only harmless devices, read-only afterwards, so a root container can
/// neither reach the host's disks nor create device nodes.
fn minimal_dev() -> Result<(), InitError> {
    mnt(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = format!("/dev/{name}");
        ctx(
            mknod(
                path.as_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
            || format!("mknod {path}"),
        )?;
        ctx(
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_str(),
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
            || format!("chmod {path}"),
        )?;
    }
    for dir in ["/dev/pts", "/dev/shm", "/dev/mqueue"] {
        ctx(std::fs::create_dir(dir), || format!("mkdir {dir}"))?;
    }
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(target, link), || {
            format!("symlink {link}")
        })?;
    }
    mnt(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mnt(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        NO_SUID_DEV_EXEC,
        Some("mode=1777,size=64m"),
    )?;
    mnt(
        Some("mqueue"),
        "/dev/mqueue",
        Some("mqueue"),
        NO_SUID_DEV_EXEC,
        None,
    )?;
    mnt(
        None,
        "/dev",
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None,
    )
}

/// Take the process's identity (groups, user, capabilities, no_new_privs), go to its working
/// directory and execute it. With `tty`, become a session leader whose controlling terminal
/// is stdin. Returns only on failure.
pub fn exec_process(process: &ProcessSpec, exe: Executable, tty: bool) -> InitError {
    match prepare_identity(process, tty) {
        Ok(()) => execute(process, exe),
        Err(e) => e,
    }
}

fn prepare_identity(process: &ProcessSpec, tty: bool) -> Result<(), InitError> {
    if tty {
        ctx(nix::unistd::setsid(), || "setsid".into())?;
        // SAFETY: TIOCSCTTY on fd 0 with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "set controlling terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // The process is root of the pod's user namespace by now: these capabilities and ids are
    // the namespace's, nothing on the host.
    let names: Vec<&str> = process.capabilities.iter().map(String::as_str).collect();
    ctx(caps::limit_bounding_set(&names), || {
        "limit capabilities".into()
    })?;
    let groups: Vec<Gid> = process.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    ctx(setgroups(&groups), || "setgroups".into())?;
    ctx(setgid(Gid::from_raw(process.gid)), || {
        format!("setgid {}", process.gid)
    })?;
    ctx(setuid(Uid::from_raw(process.uid)), || {
        format!("setuid {}", process.uid)
    })?;
    let effective: &[&str] = if process.uid == 0 { &names } else { &[] };
    ctx(caps::set_process_caps(effective), || {
        "set capabilities".into()
    })?;
    if process.no_new_privileges {
        ctx(nix::sys::prctl::set_no_new_privs(), || {
            "set no_new_privs".into()
        })?;
    }
    ctx(chdir(process.cwd.as_str()), || {
        format!("chdir to cwd ({:?})", process.cwd)
    })?;
    ctx(SigSet::empty().thread_set_mask(), || {
        "unblock signals".into()
    })?;
    Ok(())
}

fn execute(process: &ProcessSpec, exe: Executable) -> InitError {
    let to_c = |items: &[String]| -> Result<Vec<CString>, InitError> {
        items
            .iter()
            .map(|s| CString::new(s.as_str()).map_err(|_| format!("{s:?} contains a NUL byte")))
            .collect()
    };
    let (argv, env) = match (to_c(&process.argv), to_c(&process.env)) {
        (Ok(argv), Ok(env)) => (argv, env),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match exe {
        Executable::Fd(fd) => {
            let err = nix::unistd::fexecve(fd.as_fd(), &argv, &env).unwrap_err();
            format!(
                "exec {}: {err}",
                process.argv.first().map(String::as_str).unwrap_or("")
            )
        }
        Executable::Host(name) => {
            let path_var = process
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            let Some(path) = find_in_path(&name, path_var) else {
                return format!("exec: {name:?}: executable file not found in $PATH");
            };
            let c_path = match CString::new(path.as_os_str().as_encoded_bytes()) {
                Ok(p) => p,
                Err(_) => return format!("{name:?} contains a NUL byte"),
            };
            let err = nix::unistd::execve(&c_path, &argv, &env).unwrap_err();
            format!(
                "exec: {:?}: {}",
                path.display().to_string(),
                err.desc().to_lowercase()
            )
        }
    }
}
