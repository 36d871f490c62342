//! `kemu run SCENARIO.yaml`: reproduce a behaviour from one file (see `kemu::scenario`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::scenario::runner::{RunOptions, run as run_scenario};

/// Run a scenario: a lab, manifests and ordered steps with expectations. Exit 0 when every
/// expectation held, 1 at the first that did not (with an artifacts folder); the lab is
/// always torn down.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Seed of the lab's random choices (ClusterIPs, NodePorts, names), for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write artifacts (objects, events, rules, conntrack, logs) here, even on success.
    #[arg(long)]
    pub artifacts: Option<PathBuf>,
    /// Leave the lab up when the scenario ends.
    #[arg(long)]
    pub keep: bool,
    /// Name of the lab (default: from the scenario's name).
    #[arg(long)]
    pub name: Option<crate::topology::LabName>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    run_scenario(&RunOptions {
        file: args.scenario,
        seed: args.seed,
        artifacts: args.artifacts,
        keep: args.keep,
        name: args.name,
    })
}
