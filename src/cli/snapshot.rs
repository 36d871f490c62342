//! `kemu snapshot LAB [HOST]`: every host's live rules, normalised (see
//! [`crate::lab::snapshot`]), for diffing and for CI snapshots.

use std::process::ExitCode;

use clap::Args;

use crate::lab::snapshot::host_rules;
use crate::lab::state::LabRecord;
use crate::proxy::agent::control;

/// Print the live iptables/nftables rules of a lab's hosts.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Only this host (name or underlay IP); default: every host.
    pub host: Option<String>,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let topo = &record.topology;
    let hosts: Vec<_> = match &args.host {
        Some(key) => vec![record.host(key)?],
        None => topo.hosts.iter().collect(),
    };
    for (i, host) in hosts.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let mode = control::read_mode(&dir.proxy_mode_file(&host.name))
            .ok()
            .flatten()
            .map(|m| format!(" (proxy mode {m})"))
            .unwrap_or_default();
        println!("=== {}{mode}", host.name);
        let rules = host_rules(&topo.host_namespace(host))?;
        if rules.is_empty() {
            println!("(no rules)");
        } else {
            print!("{rules}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
