//! Every container runs in a user namespace of its own whose ids 0..size are the host ids
//! start..start+size of the lab's range ([`IdRange`], allocated by `kemu up`). Root in a pod,
//! `privileged: true` and `capabilities.add` are then root and capabilities *in that user
//! namespace* only: on the host the container's processes are an unprivileged uid that owns no
//! file and is "other" to every file, and every namespace the pod lives in but its own mount
//! namespace (PID, network, UTS, IPC) is owned by the host's user namespace, so that
//! CAP_SYS_ADMIN or CAP_NET_ADMIN in the pod give no power over them (no iptables, no proc or
//! sysfs mounts, no hostname); capabilities the kernel checks against the host's user namespace
//! (CAP_SYS_MODULE, CAP_SYS_RAWIO, ...) are never held at all.
//!
//! The setup is in two stages so that nothing the pod does inside its user namespace can undo
//! it:
//!
//! 1. As real root (the shim and the container's PID 1 before this module): the PID, mount,
//!    UTS and IPC namespaces and the whole mount plan: host tree read-only, private tmpfs'es,
//!    minimal /dev, /proc and sysfs, masks, bound files.
//! 2. [`enter`]: PID 1 makes its user namespace, the shim writes its id maps ([`map`]), PID 1
//!    becomes root inside it and makes a new mount namespace.
//!
//! The crux is that last step. A mount namespace copied into a less privileged user namespace
//! has every mount it inherited locked (the kernel's `lock_mnt_tree`): a read-only mount gets
//! MNT_LOCK_READONLY (no `remount,rw`, not even of a bind), nosuid/nodev/noexec cannot be
//! cleared, and each mount gets MNT_LOCKED so it cannot be unmounted or bound without its
//! children (which would reveal the host's /tmp under the pod's tmpfs, or the host's /proc
//! under the pod's). So even a privileged pod, root with every capability in its user
//! namespace and owner of this mount namespace, can mount what it likes on top but cannot
//! make the host tree writable nor reveal anything stage 1 hid. A pod that makes further mount
//! namespaces of its own gets copies that are locked the same way.
//!
//! `exec` joins the same user namespace ([`join`]), last, after the other namespaces.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::str::FromStr;

use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{Gid, Pid, Uid, setgroups, setresgid, setresuid};
use serde::{Deserialize, Serialize};

/// A range of host uids and gids (the same numbers for both): a pod's ids 0..size are the
/// host's start..start+size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedIdRange")]
pub struct IdRange {
    pub start: u32,
    pub size: u32,
}

/// An `IdRange` as written in a file, checked by `IdRange::new` when read.
#[derive(Deserialize)]
struct UncheckedIdRange {
    start: u32,
    size: u32,
}

impl TryFrom<UncheckedIdRange> for IdRange {
    type Error = String;
    fn try_from(raw: UncheckedIdRange) -> Result<IdRange, String> {
        IdRange::new(raw.start, raw.size)
    }
}

impl IdRange {
    /// A range that never includes host root (uid 0) nor the invalid id 2^32-1.
    pub fn new(start: u32, size: u32) -> Result<IdRange, String> {
        if start == 0 {
            return Err("a pod id range must not start at 0: pod root would be host root".into());
        }
        if size == 0 {
            return Err("a pod id range must not be empty".into());
        }
        if u64::from(start) + u64::from(size) > u64::from(u32::MAX) {
            return Err(format!(
                "a pod id range {start}:{size} must end below {}",
                u32::MAX
            ));
        }
        Ok(IdRange { start, size })
    }

    /// One past the last host id of the range.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.size)
    }

    /// Whether a host id is in the range.
    pub fn contains(&self, host_id: u32) -> bool {
        (u64::from(self.start)..self.end()).contains(&u64::from(host_id))
    }

    /// Whether two ranges share an id.
    pub fn overlaps(&self, other: &IdRange) -> bool {
        u64::from(self.start) < other.end() && u64::from(other.start) < self.end()
    }

    /// The host id of an id inside the pod, if the pod has it.
    pub fn host_id(&self, inside: u32) -> Option<u32> {
        (inside < self.size).then(|| self.start + inside)
    }

    /// The text written to `/proc/<pid>/uid_map` and `gid_map`: the pod's 0..size onto the
    /// range, and nothing else (host root has no id inside).
    pub fn id_map(&self) -> String {
        format!("0 {} {}\n", self.start, self.size)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.size)
    }
}

impl FromStr for IdRange {
    type Err = String;

    /// `START:SIZE`, as `--pod-id-range` takes it.
    fn from_str(s: &str) -> Result<IdRange, String> {
        let bad = || format!("{s:?} is not START:SIZE (e.g. 1073741824:65536)");
        let (start, size) = s.split_once(':').ok_or_else(bad)?;
        let start = start.parse().map_err(|_| bad())?;
        let size = size.parse().map_err(|_| bad())?;
        IdRange::new(start, size)
    }
}

/// The two ends of the handshake between the shim and the container's PID 1 in stage 2.
pub struct Handshake {
    /// The shim's end.
    pub shim: UnixStream,
    /// PID 1's end.
    pub init: UnixStream,
}

/// PID 1 has its user namespace and waits for its id maps.
const UNSHARED: u8 = b'u';
/// The shim has written the maps.
const MAPPED: u8 = b'm';

impl Handshake {
    /// A connected pair (close-on-exec, so the container never inherits it).
    pub fn new() -> std::io::Result<Handshake> {
        let (shim, init) = UnixStream::pair()?;
        Ok(Handshake { shim, init })
    }
}

fn ctx<T, E: fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Stage 2, in the container's PID 1 once the mount plan is applied: a user namespace of its
/// own with the shim's maps, root inside it, and a mount namespace owned by it (in which
/// every mount of stage 1 is locked, see the module's comment). `init` is PID 1's end of the
/// handshake.
pub fn enter(mut init: UnixStream) -> Result<(), String> {
    ctx(
        unshare(CloneFlags::CLONE_NEWUSER),
        "unshare the user namespace",
    )?;
    // Only a process in the parent user namespace with CAP_SETUID there may map a range other
    // than its own uid: the shim writes the maps.
    ctx(init.write_all(&[UNSHARED]), "ask the shim for the id maps")?;
    let mut answer = [0u8; 1];
    match init.read(&mut answer) {
        Ok(1) if answer[0] == MAPPED => {}
        _ => return Err("the shim did not map the pod's user namespace".into()),
    }
    drop(init);
    become_root()?;
    // The copy is owned by the new user namespace: this is what locks the mounts.
    ctx(
        unshare(CloneFlags::CLONE_NEWNS),
        "unshare the mount namespace in the pod's user namespace",
    )
}

/// The shim's side of stage 2 for PID 1 `child`: wait until it has its user namespace, write
/// its maps, let it go on. Nothing to do when PID 1 ended the handshake without asking: it
/// failed in stage 1 and its reason is on the status pipe.
pub fn map(mut shim: UnixStream, child: Pid, ids: &IdRange) -> Result<(), String> {
    let mut request = [0u8; 1];
    match shim.read(&mut request) {
        Ok(1) if request[0] == UNSHARED => {}
        _ => return Ok(()),
    }
    // gid_map first: writing uid_map first would not change what may be written to gid_map
    // (the shim is privileged in the parent namespace), but this is the order runc uses.
    for file in ["gid_map", "uid_map"] {
        let path = format!("/proc/{child}/{file}");
        ctx(
            std::fs::write(&path, ids.id_map()),
            &format!("write {path}"),
        )?;
    }
    ctx(shim.write_all(&[MAPPED]), "resume the container")
}

/// For `exec`: join the container's user namespace `userns` (after every other namespace: once
/// in it, this process has no privilege left over namespaces the host owns) and become root
/// inside it.
pub fn join(userns: &File) -> Result<(), String> {
    // Between joining and setresuid this process is still host uid 0: non-dumpable, the pod's
    // processes (which may hold CAP_SYS_PTRACE in their namespace) cannot ptrace it, nor read
    // its /proc files. The exec of the command makes it dumpable again.
    ctx(
        nix::sys::prctl::set_dumpable(false),
        "make the exec non-dumpable",
    )?;
    ctx(
        setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER),
        "join the container's user namespace",
    )?;
    become_root()
}

/// Become uid and gid 0 of the current user namespace, with no supplementary groups. Until then
/// the process is still host root by its ids (the host's root-owned files would be its own).
fn become_root() -> Result<(), String> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    ctx(setgroups(&[]), "clear the supplementary groups")?;
    ctx(
        setresgid(root_gid, root_gid, root_gid),
        "become gid 0 in the pod's user namespace",
    )?;
    ctx(
        setresuid(root_uid, root_uid, root_uid),
        "become uid 0 in the pod's user namespace",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_pod_ids_onto_the_range_only() {
        let ids: IdRange = "1073741824:65536".parse().unwrap();
        assert_eq!(ids.id_map(), "0 1073741824 65536\n");
        assert_eq!(ids.host_id(0), Some(1_073_741_824));
        assert_eq!(ids.host_id(65535), Some(1_073_807_359));
        assert_eq!(ids.host_id(65536), None);
        assert!(ids.contains(1_073_741_824) && ids.contains(1_073_807_359));
        assert!(!ids.contains(0) && !ids.contains(1_073_807_360));
        assert_eq!(ids.to_string(), "1073741824:65536");
    }

    #[test]
    fn ranges_that_would_reach_host_root_or_overflow_are_refused() {
        for bad in [
            "0:65536",
            "5:0",
            "4294901760:65536",
            "1:",
            ":1",
            "x:1",
            "1-2",
        ] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        assert!("4294901759:65536".parse::<IdRange>().is_ok());
    }

    #[test]
    fn overlaps() {
        let a = IdRange::new(100, 10).unwrap();
        assert!(a.overlaps(&IdRange::new(109, 5).unwrap()));
        assert!(a.overlaps(&IdRange::new(90, 11).unwrap()));
        assert!(!a.overlaps(&IdRange::new(110, 5).unwrap()));
        assert!(!a.overlaps(&IdRange::new(90, 10).unwrap()));
    }
}
