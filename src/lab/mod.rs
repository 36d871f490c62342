//! A lab's life cycle: `up` builds it from a plan and starts the supervisor, `down` tears it
//! down from the state directory alone, `status` and `exec` look inside.

pub mod agents;
pub mod build;
pub mod exec;
pub mod forward;
pub mod health;
pub mod idrange;
pub mod kubeconfig;
pub mod snapshot;
pub mod state;
pub mod supervisor;
pub mod teardown;
mod up;

pub use up::{UpOptions, UpReport, up};

/// Names of every lab with a state directory.
pub fn list_labs() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state::state_root()) else {
        return Vec::new();
    };
    let mut labs: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("lab.json").exists() || e.path().join("journal").exists())
        .filter_map(|e| e.file_name().into_string().ok())
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
