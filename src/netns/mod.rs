//! Named network namespaces, compatible with `ip netns`: each one is a bind mount of a
//! namespace file on `/run/netns/<name>`.
//!
//! `setns` only affects the calling thread, so nothing here ever switches the namespace of a
//! thread that runs other work (tokio workers in particular). Code that must run inside a
//! namespace runs on a fresh, short-lived thread that enters it and then exits (`NetNs::run`):
//! nothing needs restoring and a panic cannot leave a thread in the wrong namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::fsguard::OwnedDir;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// An open handle on a named network namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

/// Errors from namespace handling, with the namespace named.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {0} already exists")]
    Exists(String),
    #[error("network namespace {0} does not exist")]
    NotFound(String),
    #[error("{0:?} cannot name a network namespace (one plain file name under /run/netns)")]
    BadName(String),
    #[error(
        "{action} network namespace {name}: permission denied; kemu needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run it with sudo"
    )]
    Permission { action: &'static str, name: String },
    #[error("{action} network namespace {name}: {source}")]
    Io {
        action: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, name: &str, source: impl Into<io::Error>) -> NetNsError {
    let source = source.into();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NetNsError::Permission {
            action,
            name: name.to_string(),
        },
        _ => NetNsError::Io {
            action,
            name: name.to_string(),
            source,
        },
    }
}

/// Path of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `name` can name a namespace: one plain file name under `/run/netns` (names come
/// from the topology, but `down` reads them back from a journal on disk).
pub fn check_name(name: &str) -> Result<(), NetNsError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(NetNsError::BadName(name.to_string()))
    }
}

/// Whether a named namespace is pinned.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Make `/run/netns` a shared mount point, as `ip netns add` does, so that namespaces pinned
/// later are visible in mount namespaces created by `ip netns exec` or `kemu exec`.
fn prepare_netns_dir() -> Result<(), NetNsError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| io_err("prepare", NETNS_DIR, e))?;
    // Several kemu processes may get here at once; without a lock each would see "not a mount
    // point yet" and stack its own bind mount. The lock is the directory itself (a lock file
    // in it would show up in `ip netns list`).
    let lock = File::open(dir).map_err(|e| io_err("lock", NETNS_DIR, e))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("lock", NETNS_DIR, e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| io_err("prepare", NETNS_DIR, e))?;
    shared().map_err(|e| io_err("prepare", NETNS_DIR, e))
}

impl NetNs {
    /// Create and pin a new namespace. `setup` runs inside it, on the creating thread, before
    /// the handle is returned (kemu uses it for sysctls and to open a netlink socket there).
    pub fn create<T, F>(name: &str, setup: F) -> Result<(NetNs, T), NetNsError>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        Self::pin(name, None, setup)
    }

    /// Pin an existing namespace under `name` (e.g. a Docker sandbox container's
    /// `/proc/<pid>/ns/net`), so that it outlives that process's handle and is found by name
    /// like the ones kemu creates. `setup` runs inside it, as with `create`.
    pub fn adopt<T, F>(name: &str, source: &Path, setup: F) -> Result<(NetNs, T), NetNsError>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        Self::pin(name, Some(source), setup)
    }

    fn pin<T, F>(name: &str, source: Option<&Path>, setup: F) -> Result<(NetNs, T), NetNsError>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        check_name(name)?;
        prepare_netns_dir()?;
        let path = path_of(name);
        // O_EXCL: the name is ours only if we create the file.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(name.to_string()));
            }
            Err(e) => return Err(io_err("create", name, e)),
        }
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Result<T, NetNsError> {
                match source {
                    None => {
                        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("create", name, e))?
                    }
                    Some(source) => {
                        let ns = File::open(source).map_err(|e| io_err("adopt", name, e))?;
                        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                            .map_err(|e| io_err("adopt", name, e))?;
                    }
                }
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| io_err("pin", name, e))?;
                setup().map_err(|e| io_err("set up", name, e))
            })
            .join()
            .expect("namespace creation thread panicked")
        });
        match result {
            Ok(value) => Ok((NetNs::open(name)?, value)),
            Err(err) => {
                let _ = delete(name);
                Err(err)
            }
        }
    }

    /// Open an existing named namespace.
    pub fn open(name: &str) -> Result<NetNs, NetNsError> {
        match File::open(path_of(name)) {
            Ok(file) => Ok(NetNs {
                name: name.to_string(),
                file,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(NetNsError::NotFound(name.to_string()))
            }
            Err(e) => Err(io_err("open", name, e)),
        }
    }

    /// Open the namespace of a process (e.g. `/proc/<pid>/ns/net`).
    pub fn from_path(name: &str, path: &Path) -> Result<NetNs, NetNsError> {
        File::open(path)
            .map(|file| NetNs {
                name: name.to_string(),
                file,
            })
            .map_err(|e| io_err("open", name, e))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `f` inside the namespace on a fresh thread that exits afterwards.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io_err("enter", &self.name, e))?;
                f().map_err(|e| io_err("run in", &self.name, e))
            })
            .join()
            .expect("namespace thread panicked")
        })
    }
}

impl AsRawFd for NetNs {
    /// The raw fd, for `setns` in a child between fork and exec.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Unpin and remove a named namespace. A namespace that is already gone is a success, so
/// teardown can run twice. The kernel frees the namespace (and every link inside it) once the
/// last process and handle referring to it are gone.
pub fn delete(name: &str) -> Result<(), NetNsError> {
    check_name(name)?;
    let path = path_of(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io_err("unmount", name, e)),
    }
    let owner = OwnedDir::new(NETNS_DIR).expect("a plain absolute path");
    owner
        .remove_file(&path)
        .map_err(|e| io_err("remove", name, e))
}

/// Write sysctls of the calling thread's network namespace (`/proc/sys/net/...` follows the
/// caller's namespace). Keys use dots: `net.ipv4.ip_forward`.
pub fn write_sysctls(values: &[(&str, &str)]) -> io::Result<()> {
    for (key, value) in values {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))?;
    }
    Ok(())
}
