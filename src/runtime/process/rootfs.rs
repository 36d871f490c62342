//! A container's own root filesystem, for images of kemu's store (stage 1 of `userns`: run
//! as host root in the container's PID 1, in its fresh mount namespace):
//!
//! 1. each layer directory of the store is bound, read-only and *idmapped* onto the pod's id
//!    range, on `<dir>/lower/<n>`: the store keeps the image's files owned by uid 0 etc. as the
//!    image says, and through the idmapped mount they are the pod's root's (host uid
//!    `ids.start`), so root in the pod owns the image's `/etc` as it would under Docker;
//! 2. an overlay of those layers with the container's writable `<dir>/upper` is mounted on
//!    `<dir>/rootfs` (the paths are short, relative to `<dir>`: overlay options are limited to
//!    a page);
//! 3. `pivot_root` into it, and the old root is detached: nothing of the host's filesystem is
//!    reachable any more, except what the later mount steps bind in from file descriptors
//!    opened before (the pod's files and volumes).
//!
//! The idmapped layers and the overlay live only in the container's mount namespace: they
//! vanish with it, and `<dir>` is then plain directories, removed with the container.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, chdir, fork, pivot_root};

use super::spec::{LOWER_DIR, ROOTFS_DIR, UPPER_DIR, WORK_DIR};
use super::userns::IdRange;

type Error = String;

fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    r.map_err(|e| format!("{}: {e}", what()))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set up the image's root filesystem in `dir` and `pivot_root` into it; then create
/// `make_dirs` inside it (as host root, in the writable layer).
pub fn enter_image_root(
    layers: &[PathBuf],
    dir: &Path,
    ids: &IdRange,
    make_dirs: &[String],
) -> Result<(), Error> {
    if layers.is_empty() {
        return Err("the image has no layers".into());
    }
    ctx(chdir(dir), || format!("chdir to {}", dir.display()))?;
    let userns = idmap_userns(ids)?;
    // overlayfs lists lower directories top-most first.
    let mut lowers = Vec::with_capacity(layers.len());
    for (n, layer) in layers.iter().enumerate().rev() {
        let target = format!("{LOWER_DIR}/{n}");
        bind_idmapped(layer, &target, &userns)?;
        lowers.push(target);
    }
    drop(userns);
    let options = format!(
        "lowerdir={},upperdir={UPPER_DIR},workdir={WORK_DIR}",
        lowers.join(":")
    );
    ctx(
        mount(
            Some("overlay"),
            ROOTFS_DIR,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(options.as_str()),
        ),
        || {
            format!(
                "mount the image's overlay on {}",
                dir.join(ROOTFS_DIR).display()
            )
        },
    )?;
    // runc's way: pivot onto the new root with the old one stacked under it, then detach the
    // old one.
    ctx(chdir(ROOTFS_DIR), || "chdir to the root filesystem".into())?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach the host's root".into()
    })?;
    ctx(chdir("/"), || "chdir to /".into())?;
    for path in make_dirs {
        make_dir_inside(path)?;
    }
    Ok(())
}

/// Create a directory and its parents by an absolute path inside the (new) root; an existing
/// directory, or a symlink to one, is fine.
fn make_dir_inside(path: &str) -> Result<(), Error> {
    let clean = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !clean || !path.starts_with('/') {
        return Err(format!("{path:?} is not a plain absolute path"));
    }
    if Path::new(path).is_dir() {
        return Ok(());
    }
    ctx(
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path),
        || format!("create {path} in the image's root filesystem"),
    )
}

/// A user namespace whose ids 0..size are the pod's range: the mapping of the idmapped
/// layers. A child makes it and waits; this process writes its maps, keeps a file of it and
/// lets the child go.
fn idmap_userns(ids: &IdRange) -> Result<File, Error> {
    let (mut parent_end, mut child_end) = ctx(std::os::unix::net::UnixStream::pair(), || {
        "socketpair".into()
    })?;
    // SAFETY: PID 1 is single-threaded (forked from the single-threaded shim).
    match ctx(unsafe { fork() }, || "fork".into())? {
        ForkResult::Child => {
            drop(parent_end);
            // PID 1 is in the container's PID namespace but sees the host's /proc (its own
            // comes later): the child's number there is what /proc/self names.
            let host_pid = std::fs::read_link("/proc/self")
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let message = if ok { host_pid } else { String::new() };
            let _ = child_end.write_all(format!("{message}\n").as_bytes());
            // Wait until the parent has what it needs (or is gone).
            let _ = child_end.read(&mut [0u8; 1]);
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let result = (|| {
                let mut answer = [0u8; 32];
                let n = parent_end.read(&mut answer).unwrap_or(0);
                let host_pid = String::from_utf8_lossy(&answer[..n]).trim().to_string();
                if host_pid.is_empty() || !host_pid.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("make the user namespace of the image's ids".to_string());
                }
                for file in ["uid_map", "gid_map"] {
                    let path = format!("/proc/{host_pid}/{file}");
                    ctx(std::fs::write(&path, ids.id_map()), || {
                        format!("write {path}")
                    })?;
                }
                ctx(File::open(format!("/proc/{host_pid}/ns/user")), || {
                    "open the image ids' user namespace".into()
                })
            })();
            let _ = parent_end.write_all(b"x");
            drop(parent_end);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// A detached copy of the mount at `path` (a bind mount not attached anywhere yet), with
/// `open_tree(OPEN_TREE_CLONE)`: it stays usable after the host's root is detached.
pub fn clone_tree(path: &Path) -> Result<OwnedFd, Error> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: open_tree takes a NUL-terminated path and flags; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "bind {} (open_tree): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just gave us this fd; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach a tree of [`clone_tree`] on `target` (absolute, or relative to the cwd).
pub fn attach_tree(tree: &OwnedFd, target: &str) -> Result<(), Error> {
    let c_target = CString::new(target).map_err(|e| e.to_string())?;
    // SAFETY: move_mount of our detached tree onto a NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(format!(
            "attach a mount on {target} (move_mount): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Bind `layer` read-only with the ids of `userns` onto `target` (relative to the cwd).
fn bind_idmapped(layer: &Path, target: &str, userns: &File) -> Result<(), Error> {
    let tree = clone_tree(layer)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with a valid attribute struct of its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "idmap the image layer {} onto the pod's ids (mount_setattr): {}",
            layer.display(),
            std::io::Error::last_os_error()
        ));
    }
    attach_tree(&tree, target)
}

/// A file of an image (`etc/passwd`), read from its layer directories as the overlay would
/// show it: the top-most layer that has the path decides (a whiteout or anything but a
/// regular file there: no such file). Symlinks are never followed, so nothing outside the
/// layers is read.
pub fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        let mut path = layer.clone();
        let mut parts = rel.split('/').peekable();
        let mut present = true;
        while let Some(part) = parts.next() {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if parts.peek().is_some() && m.is_dir() => {}
                Ok(m) if parts.peek().is_none() && m.is_file() => {}
                // Present but not what we can read (a whiteout, a symlink, ...).
                Ok(_) => return None,
                Err(_) => {
                    present = false;
                    break;
                }
            }
        }
        if present {
            let mut text = String::new();
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .ok()?
                .take(1 << 20)
                .read_to_string(&mut text)
                .ok()?;
            return Some(text);
        }
    }
    None
}
