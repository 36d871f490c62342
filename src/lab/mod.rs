//! A lab's life cycle: `up` builds it from a plan and starts the supervisor, `down` tears it
//! down from the state directory alone, `status` and `exec` look inside.

pub mod addons;
pub mod agents;
pub mod build;
pub mod cgroup;
pub mod exec;
pub mod forward;
pub mod health;
pub mod idrange;
pub mod kubeconfig;
pub mod pki;
pub mod progress;
pub mod repair;
pub mod snapshot;
pub mod state;
pub mod supervisor;
pub mod teardown;
mod up;

pub use up::{UpOptions, UpReport, up};

use crate::topology::LabName;

/// Every lab with a state directory. Entries of the state root that are not a lab's (a name
/// that is not a lab name, a directory without a lab's mark) are left alone.
pub fn list_labs() -> Vec<LabName> {
    let Ok(root) = state::state_root() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(root.root()) else {
        return Vec::new();
    };
    let mut labs: Vec<LabName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| LabName::parse(e.file_name().to_str()?).ok())
        .filter(|name| state::LabDir::new(name).is_ok_and(|d| d.is_lab()))
        .collect();
    labs.sort();
    labs
}

/// Whether this process can build labs (root, or at least CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    anyhow::ensure!(
        caps & CAP_NET_ADMIN != 0 && caps & CAP_SYS_ADMIN != 0,
        "kemu needs root to create network namespaces (CAP_SYS_ADMIN and CAP_NET_ADMIN): run it with sudo"
    );
    Ok(())
}
