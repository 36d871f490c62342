//! kemu: a single-host, multi-node Kubernetes emulator built on Linux network namespaces.
//!
//! The crate is organised the way a lab comes to life:
//! `topology` (a YAML file becomes a validated, resolved model) → `plan` (the ordered steps,
//! pure data) → `netns`/`netlink` (the thin layer that touches the kernel) → `lab` (up, down,
//! state, supervisor). The agents that run inside the emulated hosts live in their own modules.

pub mod api;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod dns;
pub mod events;
pub mod faults;
pub mod firewall;
pub mod flannel;
pub mod fsguard;
pub mod graph;
pub mod images;
pub mod kubelet;
pub mod lab;
pub mod netlink;
pub mod netns;
pub mod netpol;
pub mod observe;
pub mod overlay;
pub mod plan;
pub mod proxy;
pub mod reach;
pub mod runtime;
pub mod scenario;
pub mod scheduler;
pub mod tls;
pub mod topology;

/// Helpers shared by the unit tests of every module.
#[cfg(test)]
pub(crate) mod testing {
    /// insta settings that store snapshots in the top-level `snapshots/` folder, named after the
    /// module that takes them (e.g. `kemu__topology__resolve__tests__seed_plan.snap`).
    pub fn snapshot_settings() -> insta::Settings {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
        settings.set_prepend_module_to_snapshot(true);
        settings
    }
}
