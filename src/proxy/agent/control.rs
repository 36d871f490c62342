//! The agent's two files in its host's state directory (`/run/kemu/<lab>/hosts/<host>/`):
//!
//! - `proxy-mode`: one line, the mode the agent must run (`userspace`, `iptables` or
//!   `nftables`). `kemu up` writes it from the host's effective mode; `kemu proxy mode`
//!   rewrites it and sends the agent SIGHUP; the agent also re-reads it periodically.
//! - `proxy-status.json`: what the agent last did ([`ProxyStatus`]), rewritten after every
//!   sync, so that `kemu proxy mode`, `kemu snapshot`, tests and benchmarks can tell when a
//!   change has reached the kernel.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::state::{LabDir, write_atomic};
use crate::proxy::ProxyMode;

/// File name of the mode file inside a host directory.
pub const MODE_FILE: &str = "proxy-mode";
/// File name of the status file inside a host directory.
pub const STATUS_FILE: &str = "proxy-status.json";

pub fn mode_file(dir: &LabDir, host: &str) -> PathBuf {
    dir.host_dir(host).join(MODE_FILE)
}

pub fn status_file(dir: &LabDir, host: &str) -> PathBuf {
    dir.host_dir(host).join(STATUS_FILE)
}

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

/// Write a mode file atomically.
pub fn write_mode(path: &Path, mode: ProxyMode) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_atomic(path, format!("{mode}\n").as_bytes())
}

/// Write every minion's mode file from its effective mode (`kemu up`, after
/// `--proxy-mode` has overridden the topology's).
pub fn write_mode_files(topo: &crate::topology::Topology, dir: &LabDir) -> std::io::Result<()> {
    for host in topo.minions() {
        write_mode(&mode_file(dir, &host.name), host.proxy_mode)?;
    }
    Ok(())
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
}

impl ProxyStatus {
    pub fn read(path: &Path) -> Option<ProxyStatus> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_files_round_trip_and_bad_content_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h").join(MODE_FILE);
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
