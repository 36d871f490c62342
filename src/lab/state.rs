//! A lab's state directory, `/run/kemu/<lab>/`: the single source of truth for `down`.
//!
//! - `lab.json`: the resolved topology and how the lab was started (written first);
//! - `journal`: one JSON line per namespace, appended *before* the namespace is created, so
//!   that `down` after a crash or a SIGKILL removes everything that may exist (and treats what
//!   does not as already gone). Agents append their own namespaces (pods) to it too;
//! - `pids/<pid>`: every long-lived process kemu started for the lab, with its start time so a
//!   recycled PID is never mistaken for ours;
//! - `hosts/<host>/`: per-host files (`subnet.env`, `hosts`), `logs/`: agent logs.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fsguard::OwnedDir;
use crate::topology::{LabName, Topology};

/// Default root of all lab state.
pub const DEFAULT_STATE_ROOT: &str = "/run/kemu";

/// The variable that moves the state root (tests of hostile names run against a temporary one).
pub const STATE_DIR_VAR: &str = "KEMU_STATE_DIR";

/// The state root's path: `$KEMU_STATE_DIR` or `/run/kemu`. Not checked; see [`state_root`].
pub fn state_root_path() -> PathBuf {
    std::env::var_os(STATE_DIR_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
}

/// The state root, through which every lab file is written and removed: an absolute, plain
/// path other than `/` (anything else is refused with a message naming the variable).
pub fn state_root() -> io::Result<OwnedDir> {
    let path = state_root_path();
    OwnedDir::new(&path)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{STATE_DIR_VAR}: {e}")))
}

/// The file that marks a directory of the state root as a lab's, written first by `up`.
/// `down` removes a directory recursively only when it carries this mark (or the state
/// files of a lab made before the mark existed).
pub const LAB_MARK: &str = ".kemu-lab";

/// Paths inside one lab's state directory.
#[derive(Debug, Clone)]
pub struct LabDir {
    pub root: PathBuf,
    /// The state root: every write and removal of the lab's files goes through it.
    pub owner: OwnedDir,
}

impl LabDir {
    /// The state directory of `lab` (it need not exist).
    pub fn new(lab: &LabName) -> io::Result<LabDir> {
        let owner = state_root()?;
        let root = owner.root().join(lab.as_str());
        // A lab name cannot escape (`LabName`); prove it anyway, it is what keeps `/` safe.
        owner.prove(&root)?;
        // Everything of a lab is reached through this directory: a symlink planted in its
        // place would lead every read, write and removal somewhere else.
        if std::fs::symlink_metadata(&root).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a symlink, not a lab's state directory: kemu will not use it",
                    root.display()
                ),
            ));
        }
        Ok(LabDir { root, owner })
    }

    /// A lab directory at an explicit place (tests, tools that were handed a path).
    pub fn at(root: impl Into<PathBuf>) -> io::Result<LabDir> {
        let root = root.into();
        let owner = crate::fsguard::parent_of(&root)?;
        owner.prove(&root)?;
        Ok(LabDir { root, owner })
    }

    pub fn mark(&self) -> PathBuf {
        self.root.join(LAB_MARK)
    }
    /// Whether the directory holds a lab (its mark, or the state files of an older kemu).
    pub fn is_lab(&self) -> bool {
        [self.mark(), self.lab_json(), self.journal()]
            .iter()
            .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
    }
    pub fn lab_json(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.root.join("hosts").join(host)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The proxy agent's mode file (`kemu up` writes it, `kemu proxy mode` rewrites it).
    pub fn proxy_mode_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("proxy-mode")
    }
    /// The proxy agent's status file, rewritten after every sync.
    pub fn proxy_status_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("proxy-status.json")
    }
    /// The NetworkPolicy agent's status file, rewritten after every sync.
    pub fn netpol_status_file(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("netpol-status.json")
    }
    /// The supervisor's own state (`supervisor::SupervisorState`).
    pub fn supervisor_json(&self) -> PathBuf {
        self.root.join("supervisor.json")
    }
    /// The lab's name, from the directory's.
    pub fn name(&self) -> Option<LabName> {
        LabName::parse(self.root.file_name()?.to_str()?).ok()
    }
    pub fn agents_json(&self) -> PathBuf {
        self.root.join("agents.json")
    }
    /// The supervisor's forwarded API port on 127.0.0.1.
    pub fn api_port(&self) -> PathBuf {
        self.root.join("api-port")
    }
    /// Read the forwarded API port, if the supervisor has published it.
    pub fn read_api_port(&self) -> Option<u16> {
        std::fs::read_to_string(self.api_port())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
    /// The lab's certificates and keys (`lab::pki`).
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn exists(&self) -> bool {
        self.root.exists()
    }
}

/// The lab a command names is not up, or no lab is (exit code 3).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LabNotFound {
    #[error("lab {0} is not up (`kemu list` shows the labs that are)")]
    Named(LabName),
    #[error("no labs are up (start one with `kemu up topologies/seed.yaml`)")]
    None,
}

/// A command named a host the lab does not have (a usage error, exit code 2).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NoSuchHost(pub String);

/// What `lab.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabRecord {
    pub topology: Topology,
    /// The topology file it came from, for `status`.
    pub source: Option<PathBuf>,
    /// The kemu binary that built the lab (agents are started from it).
    pub binary: PathBuf,
    /// Seconds since the epoch.
    pub created: u64,
    /// Port on 127.0.0.1 forwarded to the API server, once the supervisor runs.
    pub api_port: Option<u16>,
    /// The user kubeconfig that got a `kemu-<lab>` context (removed again by `down`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The context that was current in that kubeconfig before `up` (given back by `down`).
    #[serde(default)]
    pub previous_context: Option<String>,
    /// Supervisors started by `kemu repair` after the one before had died, the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<Repair>,
    #[serde(default)]
    pub repairs: u32,
    /// The host uids and gids the lab's pods' user namespaces map onto (`super::idrange`);
    /// none in a record written before pods had user namespaces.
    #[serde(default)]
    pub pod_id_range: Option<crate::runtime::process::userns::IdRange>,
}

/// What `kemu repair` found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// Seconds since the epoch.
    pub at: u64,
    /// The supervisor that was found dead.
    pub dead_pid: Option<i32>,
    /// Agents the new supervisor took over, and how many it had to start again.
    pub adopted: usize,
    pub restarted: usize,
}

impl LabRecord {
    /// The state directory and record of the running lab `lab`, or an error that says so.
    pub fn open(lab: &LabName) -> anyhow::Result<(LabDir, LabRecord)> {
        let dir = LabDir::new(lab)?;
        if !dir.exists() {
            return Err(LabNotFound::Named(lab.clone()).into());
        }
        let record = LabRecord::load(&dir)?;
        Ok((dir, record))
    }

    /// A host of the lab by name or underlay IP; the error lists the hosts there are.
    pub fn host(&self, key: &str) -> anyhow::Result<&crate::topology::Host> {
        let topo = &self.topology;
        topo.find_host(key).ok_or_else(|| {
            let names: Vec<String> = topo
                .hosts
                .iter()
                .map(|h| format!("{} ({})", h.name, h.ip))
                .collect();
            NoSuchHost(format!(
                "lab {} has no host {key:?}; hosts: {}",
                topo.name,
                names.join(", ")
            ))
            .into()
        })
    }

    pub fn load(dir: &LabDir) -> anyhow::Result<LabRecord> {
        let text = std::fs::read_to_string(dir.lab_json())
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.lab_json().display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Write atomically (temp file + rename) so a crash never leaves half a file.
    pub fn save(&self, dir: &LabDir) -> io::Result<()> {
        dir.owner.write_atomic(
            &dir.lab_json(),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JournalEntry {
    /// A network namespace that kemu is about to create (or has created).
    Namespace(String),
}

/// The append-only journal. Each append is one `write` on an `O_APPEND` file, so several
/// processes (launcher, kubelets) can append to it safely and a SIGKILL loses nothing written.
pub struct Journal {
    file: File,
}

impl Journal {
    pub fn open(dir: &LabDir) -> io::Result<Journal> {
        let file = dir.owner.open_append(&dir.journal())?;
        Ok(Journal { file })
    }

    /// Append entries with a single write.
    pub fn append(&mut self, entries: &[JournalEntry]) -> io::Result<()> {
        let mut buf = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut buf, entry)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)
    }

    /// Read every complete entry (a torn last line from a crash is ignored).
    pub fn read(dir: &LabDir) -> io::Result<Vec<JournalEntry>> {
        let text = match std::fs::read_to_string(dir.journal()) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// A process kemu started, identified by PID and kernel start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRecord {
    pub pid: i32,
    /// `starttime` from `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
    /// What it is, e.g. `supervisor`, `192.168.0.201/kubelet`.
    pub what: String,
}

/// The start time of a live process, `None` if it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process is a zombie or gone.
pub fn process_is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}

impl ProcessRecord {
    /// Record a live process.
    pub fn of(pid: i32, what: impl Into<String>) -> Option<ProcessRecord> {
        Some(ProcessRecord {
            pid,
            start_time: process_start_time(pid)?,
            what: what.into(),
        })
    }

    /// Whether the recorded process is still the one running under that PID.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time) && !process_is_dead(self.pid)
    }

    /// Register in `pids/` (one file per process, so writers never conflict).
    pub fn register(&self, dir: &LabDir) -> io::Result<()> {
        dir.owner.create_dir_all(&dir.pids())?;
        dir.owner.write_atomic(
            &dir.pids().join(self.pid.to_string()),
            serde_json::to_string(self)?.as_bytes(),
        )
    }

    /// Remove the registration (after the process has exited).
    pub fn unregister(&self, dir: &LabDir) {
        let _ = dir
            .owner
            .remove_file(&dir.pids().join(self.pid.to_string()));
    }

    /// Every registered process.
    pub fn all(dir: &LabDir) -> Vec<ProcessRecord> {
        let Ok(entries) = std::fs::read_dir(dir.pids()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            // A registration being written is not one yet.
            .filter(|e| !e.file_name().to_string_lossy().contains(".tmp."))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_a_torn_last_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::at(tmp.path().join("lab")).unwrap();
        std::fs::create_dir(&dir.root).unwrap();
        let mut journal = Journal::open(&dir).unwrap();
        journal
            .append(&[
                JournalEntry::Namespace("kemu-t-a".into()),
                JournalEntry::Namespace("kemu-t-b".into()),
            ])
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.journal())
            .unwrap()
            .write_all(b"{\"namesp")
            .unwrap();
        assert_eq!(
            Journal::read(&dir).unwrap(),
            vec![
                JournalEntry::Namespace("kemu-t-a".into()),
                JournalEntry::Namespace("kemu-t-b".into())
            ]
        );
    }

    #[test]
    fn own_process_is_alive_and_recognised() {
        let me = ProcessRecord::of(std::process::id() as i32, "test").unwrap();
        assert!(me.is_alive());
        let recycled = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }
}
