//! `kemu repair LAB`: start a new supervisor for a lab whose supervisor died.

use std::process::ExitCode;

use clap::Args;

use crate::lab::repair::{Outcome, repair};
use crate::lab::state::LabRecord;

/// Restart a lab's supervisor after it died, adopting the agents that still run.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
}

pub fn run(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let (dir, mut record) = LabRecord::open(&args.lab)?;
    println!("{}", describe(&args.lab, &repair(&dir, &mut record)?));
    Ok(ExitCode::SUCCESS)
}

/// One line on what `repair` did, for `repair` and for `up` of a lab that needed it.
pub fn describe(lab: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Running { pid } => {
            format!("lab {lab}: the supervisor is running (pid {pid}); nothing to repair")
        }
        Outcome::NoSupervisor => {
            format!("lab {lab} was built with --network-only and has no supervisor to repair")
        }
        Outcome::Repaired {
            pid,
            repair,
            total,
            api_port,
        } => format!(
            "lab {lab}: the supervisor{} had died; a new one runs (pid {pid}): {} of {total} agents adopted, {} started again{}",
            repair
                .dead_pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default(),
            repair.adopted,
            repair.restarted,
            api_port
                .map(|p| format!("; API on https://127.0.0.1:{p}"))
                .unwrap_or_default()
        ),
    }
}
