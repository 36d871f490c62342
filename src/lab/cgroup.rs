//! A lab's processes, tracked race-free by the kernel: every process of a lab lives in the
//! lab's cgroup (v2), `<cgroup2 mount>/kemu/<lab>/`:
//!
//! ```text
//! kemu/<lab>/supervisor        the supervisor (it joins before it executes)
//! kemu/<lab>/hosts/<host>      that host's agents, and everything they start (container
//!                              shims and containers), and commands run by `kemu exec`
//! ```
//!
//! A process joins its cgroup between fork and exec (`join_before_exec`), before it can start
//! anything, so no descendant can escape: whatever `up` managed to start before a SIGKILL,
//! whatever an agent double-forked, `down` finds it there and stops it with `cgroup.kill`.
//! Where no cgroup v2 hierarchy is mounted, kemu falls back to the recorded PIDs alone.
//!
//! The hierarchy is found in `/proc/self/mountinfo` (Debian's hybrid layout mounts it at
//! `/sys/fs/cgroup/unified`, current Ubuntu at `/sys/fs/cgroup`). kemu writes no controller
//! settings: it only creates, joins, freezes, kills and removes its own cgroups.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsguard::OwnedDir;
use crate::topology::LabName;

/// The directory under the hierarchy's root that holds every lab's cgroup.
const KEMU_CGROUP: &str = "kemu";

/// The mount point of the cgroup v2 hierarchy in a mountinfo text: the mount of its root
/// (`/sys/fs/cgroup` preferred when there are several), or `None` when there is none.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // `36 25 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw,...`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fstype == Some("cgroup2") && fields.len() >= 5 && fields[3] == "/" {
            // Mount points escape spaces as \040.
            found.push(PathBuf::from(fields[4].replace("\\040", " ")));
        }
    }
    found
        .iter()
        .find(|p| p.as_path() == Path::new("/sys/fs/cgroup"))
        .or(found.first())
        .cloned()
}

/// One lab's cgroup tree.
#[derive(Debug, Clone)]
pub struct LabCgroup {
    /// `<mount>/kemu/<lab>`.
    pub dir: PathBuf,
    /// `<mount>/kemu`: every cgroup kemu creates or removes lies strictly inside it.
    owner: OwnedDir,
}

impl LabCgroup {
    /// The cgroup of `lab`, or `None` when the machine has no cgroup v2 hierarchy.
    pub fn of(lab: &LabName) -> Option<LabCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = cgroup2_mount(&mountinfo)?;
        let owner = OwnedDir::new(mount.join(KEMU_CGROUP)).ok()?;
        Some(LabCgroup {
            dir: owner.root().join(lab.as_str()),
            owner,
        })
    }

    /// The supervisor's cgroup.
    pub fn supervisor(&self) -> PathBuf {
        self.dir.join("supervisor")
    }

    /// The cgroup of a host's processes.
    pub fn host(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host)
    }

    /// Create `cgroup` (and its parents up to `kemu/`).
    pub fn create(&self, cgroup: &Path) -> io::Result<()> {
        self.owner.create_dir_all(self.owner.root())?;
        self.owner.create_dir_all(cgroup)
    }

    /// Open `cgroup`'s `cgroup.procs` (creating the cgroup) for a child to join it between
    /// fork and exec ([`join_before_exec`]).
    pub fn open_procs(&self, cgroup: &Path) -> io::Result<File> {
        self.create(cgroup)?;
        self.owner.prove(cgroup)?;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(cgroup.join("cgroup.procs"))
    }

    /// Freeze (or thaw) every process of `cgroup` with `cgroup.freeze`, waiting until the
    /// kernel reports it done (`frozen` in `cgroup.events`), for `kemu node stop|start`.
    pub fn freeze(&self, cgroup: &Path, frozen: bool, timeout: Duration) -> io::Result<()> {
        self.owner.prove(cgroup)?;
        std::fs::write(cgroup.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + timeout;
        loop {
            let events = std::fs::read_to_string(cgroup.join("cgroup.events"))?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} did not become {want} within {timeout:?}",
                    cgroup.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the lab has a cgroup.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Every cgroup of the lab, deepest first.
    fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&entry.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut out = Vec::new();
        if self.exists() {
            walk(&self.dir, &mut out);
        }
        out
    }

    /// The PIDs of every process in the lab's cgroups.
    pub fn pids(&self) -> Vec<i32> {
        self.tree()
            .iter()
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Whether any process is left (`cgroup.events`' `populated`, which counts descendants).
    pub fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => false,
        }
    }

    /// SIGKILL every process of the lab at once (`cgroup.kill`; on kernels before 5.14, each
    /// PID of a frozen tree, so nothing forks in between).
    pub fn kill(&self) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() {
            return std::fs::write(kill_file, "1");
        }
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "1");
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        Ok(())
    }

    /// Kill everything and wait until the tree is empty; then remove every cgroup of the lab.
    /// Repeats the kill while processes remain: a child that was between fork and joining
    /// when the first kill ran is caught by the next.
    pub fn kill_and_remove(&self, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut killed = 0;
        while self.exists() {
            let pids = self.pids().len();
            if pids > 0 || self.populated() {
                killed = killed.max(pids);
                self.kill()?;
                if Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "processes of {} did not die within {timeout:?}: {:?}",
                        self.dir.display(),
                        self.pids()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let mut busy = false;
            for dir in self.tree() {
                match self.owner.remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // A process joined meanwhile: kill again.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = true,
                    Err(e) => return Err(e),
                }
            }
            if busy && Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} stays busy",
                    self.dir.display()
                )));
            }
        }
        Ok(killed)
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is open as `fd`. Meant for
/// `pre_exec` (between fork and exec): it only calls `write`, which is async-signal-safe.
pub fn join_before_exec(fd: RawFd) -> io::Result<()> {
    // Writing "0" moves the writer itself.
    // SAFETY: writes one byte from a static buffer to an fd the caller keeps open.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n\
            99 30 0:26 /user.slice /mnt/x rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A bind mount of a sub-tree only is not the hierarchy's root.
        let only_sub = "99 30 0:26 /user.slice /mnt/x rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(only_sub), None);
        assert_eq!(cgroup2_mount(""), None);
    }
}
