//! A container's directory, `<root>/containers/<id>/`, and the state files in it. The
//! directory is the only record of a container: a kubelet that restarts finds its containers
//! there, running or exited.
//!
//! ```text
//! <pod-uid>_<container-name>_<attempt>/
//!   spec.json        how to start it (ShimSpec), written by the runtime
//!   hosts, resolv.conf, hostname   bind-mounted read-only into the container
//!   shim.json        {pid, start_ticks} of `kemu container-shim`
//!   container.json   {pid, start_ticks, started_at} of the container's PID 1 (host PID)
//!   exit.json        {exit_code, signal, finished_at, reason}: written by the shim at the end
//!   container.log    stdout and stderr in the CRI log format
//!   shim.log         the shim's own diagnostics
//! ```
//!
//! PIDs are recorded with the process's start time (`/proc/<pid>/stat` field 22) so that a
//! recycled PID is never mistaken for the container.

use std::io;
use std::path::Path;

use crate::fsguard::OwnedDir;

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const SPEC: &str = "spec.json";
pub const SHIM: &str = "shim.json";
pub const CONTAINER: &str = "container.json";
pub const EXIT: &str = "exit.json";
pub const LOG: &str = "container.log";
pub const SHIM_LOG: &str = "shim.log";

/// The id of attempt `attempt` of container `name` in pod `pod_uid`.
pub fn container_id(pod_uid: &str, name: &str, attempt: u32) -> String {
    format!("{pod_uid}_{name}_{attempt}")
}

/// The parts of an id: pod uid, container name, attempt.
pub fn parse_id(id: &str) -> Option<(&str, &str, u32)> {
    let (rest, attempt) = id.rsplit_once('_')?;
    let (pod_uid, name) = rest.split_once('_')?;
    Some((pod_uid, name, attempt.parse().ok()?))
}

/// Whether a pod uid or container name can be part of an id and a path.
pub fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && part != "."
        && part != ".."
}

/// A process, identified beyond its PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// The container's main process and when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub pid: u32,
    pub start_ticks: u64,
    pub started_at: Timestamp,
}

/// How the container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: Timestamp,
    pub reason: String,
}

impl ProcessRecord {
    /// The record of a live process.
    pub fn of(pid: u32) -> io::Result<ProcessRecord> {
        let (start_ticks, _) = stat(pid)?;
        Ok(ProcessRecord { pid, start_ticks })
    }

    /// Whether the process is still there (and not a zombie).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Ok((ticks, state)) if ticks == self.start_ticks && state != 'Z' && state != 'X')
    }

    /// Send a signal, unless the PID now belongs to another process.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if !self.alive() {
            return Ok(());
        }
        // SAFETY: kill with plain integers.
        if unsafe { libc::kill(self.pid as i32, signal) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }
}

impl ContainerRecord {
    pub fn process(&self) -> ProcessRecord {
        ProcessRecord {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }
}

/// Start time and state letter from `/proc/<pid>/stat`.
fn stat(pid: u32) -> io::Result<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); start time is field 22.
    let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
    let ticks = fields
        .get(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    Ok((ticks, state))
}

/// Read a JSON state file; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write a JSON state file atomically (a temporary file, then rename), proven to lie in `owner`.
pub fn write_json<T: Serialize>(owner: &OwnedDir, path: &Path, value: &T) -> io::Result<()> {
    owner.write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = container_id("0b0e1a52-1111-2222-3333-444455556666", "web.server", 12);
        assert_eq!(id, "0b0e1a52-1111-2222-3333-444455556666_web.server_12");
        assert_eq!(
            parse_id(&id),
            Some(("0b0e1a52-1111-2222-3333-444455556666", "web.server", 12))
        );
        assert_eq!(parse_id("nonsense"), None);
    }

    #[test]
    fn parts_are_path_safe() {
        assert!(valid_part("nginx-1"));
        for bad in ["", ".", "..", "a/b", "a_b", "a b"] {
            assert!(!valid_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn own_process_is_alive_and_recycled_pids_are_not() {
        let me = ProcessRecord::of(std::process::id()).unwrap();
        assert!(me.alive());
        let recycled = ProcessRecord {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!recycled.alive());
    }
}
