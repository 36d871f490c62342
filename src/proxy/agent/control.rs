//! The agent's two files, whose paths it is given (`--mode-file`, `--status-file`; the launcher
//! puts them in the host's state directory, `LabDir::proxy_mode_file`):
//!
//! - `proxy-mode`: one line, the mode the agent must run (`userspace`, `iptables` or
//!   `nftables`). `kemu up` writes it from the host's effective mode; `kemu proxy mode`
//!   rewrites it and sends the agent SIGHUP; the agent also re-reads it periodically.
//! - `proxy-status.json`: what the agent last did ([`ProxyStatus`]), rewritten after every
//!   sync, so that `kemu proxy mode`, `kemu snapshot`, tests and benchmarks can tell when a
//!   change has reached the kernel.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsguard;
use crate::proxy::ProxyMode;

/// Parse a mode name as written in a mode file (surrounding whitespace ignored).
pub fn parse_mode(text: &str) -> Option<ProxyMode> {
    match text.trim() {
        "userspace" => Some(ProxyMode::Userspace),
        "iptables" => Some(ProxyMode::Iptables),
        "nftables" => Some(ProxyMode::Nftables),
        _ => None,
    }
}

/// Read a mode file. `Ok(None)` when it does not exist; an error names the file and the bad
/// content.
pub fn read_mode(path: &Path) -> anyhow::Result<Option<ProxyMode>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_mode(&text).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds {:?}, not a proxy mode (userspace, iptables or nftables)",
                path.display(),
                text.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Write a mode file atomically (only inside the directory it names).
pub fn write_mode(path: &Path, mode: ProxyMode) -> std::io::Result<()> {
    let dir = fsguard::parent_of(path)?;
    dir.create_dir_all(dir.root())?;
    dir.write_atomic(path, format!("{mode}\n").as_bytes())
}

/// What the agent reports after each sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub node: String,
    pub pid: u32,
    /// The mode whose rules are in the kernel (`None` before the first sync and after exit).
    pub mode: Option<ProxyMode>,
    /// Completed syncs since start.
    pub syncs: u64,
    /// Proxied service ports in the last sync.
    pub service_ports: usize,
    /// The highest resourceVersion among the objects the last sync saw: a Service or
    /// EndpointSlice change with resourceVersion ≤ this is in the kernel.
    pub applied_version: u64,
    /// Duration of the last sync (render and apply), in milliseconds.
    pub last_sync_ms: f64,
    /// Where the last sync's time went.
    #[serde(default)]
    pub last_sync_phases: SyncPhases,
    /// The last sync's error, if it failed.
    pub error: Option<String>,
    /// Userspace mode: the local proxy port of each service port (`ns/name:port/proto`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub proxy_ports: std::collections::BTreeMap<String, u16>,
    /// The last syncs, oldest first (at most [`RECENT_SYNCS`]): `kemu events` shows them.
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    pub recent_syncs: std::collections::VecDeque<SyncRecord>,
}

/// How many syncs the status file remembers.
pub const RECENT_SYNCS: usize = 64;

/// One sync, as the lab's time line shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    /// When it ended.
    pub at: jiff::Timestamp,
    pub mode: ProxyMode,
    pub full: bool,
    pub ms: f64,
    /// Service ports and endpoints it programmed.
    pub service_ports: usize,
    pub endpoints: usize,
    /// Stale UDP conntrack entries it deleted.
    #[serde(default)]
    pub conntrack_deleted: usize,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a sync's time went, in milliseconds, and how much it wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPhases {
    /// Building the input from the cached objects (userspace: and updating the forwarder).
    pub input_ms: f64,
    /// Rendering the rule set and choosing what to write (all of it, or a patch).
    pub render_ms: f64,
    /// The kernel's commands: `iptables-save` (full syncs), `iptables-restore` or `nft -f`.
    pub kernel_ms: f64,
    /// Bytes handed to `iptables-restore` or `nft`.
    pub written_bytes: usize,
    /// A full sync (everything written) rather than a patch.
    pub full: bool,
    /// Listing the conntrack table and deleting the stale UDP entries.
    #[serde(default)]
    pub conntrack_ms: f64,
    /// Conntrack entries the sync deleted.
    #[serde(default)]
    pub conntrack_deleted: usize,
}

impl ProxyStatus {
    pub fn read(path: &Path) -> Option<ProxyStatus> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        fsguard::parent_of(path)?.write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_files_round_trip_and_bad_content_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h").join("proxy-mode");
        assert_eq!(read_mode(&path).unwrap(), None);
        write_mode(&path, ProxyMode::Nftables).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "nftables\n");
        assert_eq!(read_mode(&path).unwrap(), Some(ProxyMode::Nftables));
        std::fs::write(&path, "ipvs\n").unwrap();
        let err = read_mode(&path).unwrap_err().to_string();
        assert!(
            err.contains("\"ipvs\"") && err.contains("proxy-mode"),
            "{err}"
        );
    }
}
