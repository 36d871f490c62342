//! `kemu partition LAB HOSTS... [--from HOSTS...]` and `kemu heal LAB`.

use std::collections::BTreeSet;
use std::process::ExitCode;

use clap::Args;

use crate::faults::partition;
use crate::faults::state::{FaultLock, FaultState, Plane};
use crate::lab::state::LabRecord;

/// Cut hosts off from the others (or from the hosts given with --from).
#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// The hosts to cut off (names or underlay IPs).
    #[arg(required = true)]
    pub hosts: Vec<String>,
    /// The other side (default: every other host).
    #[arg(long, num_args = 1..)]
    pub from: Vec<String>,
    /// Which traffic: control (to and from the API server), data (pods, overlay, services:
    /// everything else) or all.
    #[arg(long, value_enum, default_value_t = Plane::All)]
    pub plane: Plane,
    /// Cut only what the hosts send to the other side.
    #[arg(long)]
    pub one_way: bool,
}

pub fn run(args: PartitionArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let p = partition::resolve(&record, &args.hosts, &args.from, args.plane, args.one_way)?;
    let _lock = FaultLock::take(&dir)?;
    let mut state = FaultState::load(&dir)?;
    anyhow::ensure!(
        !state.partitions.contains(&p),
        "this partition is in force already"
    );
    let touched: BTreeSet<String> = p.hosts.iter().cloned().collect();
    state.partitions.push(p);
    if let Err(e) = partition::sync(&record, &state, &touched) {
        state.partitions.pop();
        let _ = partition::sync(&record, &state, &touched);
        return Err(e);
    }
    state.save(&dir)?;
    if let Some(line) = state
        .describe()
        .into_iter()
        .rfind(|l| l.starts_with("partition"))
    {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Remove every fault of a lab: partitions, link faults, stopped nodes.
#[derive(Debug, Args)]
pub struct HealArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
}

pub fn heal(args: HealArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let n = crate::faults::heal(&dir, &record)?;
    println!("healed {n} fault(s)");
    Ok(ExitCode::SUCCESS)
}
