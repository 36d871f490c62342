//! `kemu scheduler`: binds pending pods to nodes (started on the master by the supervisor).

use std::process::ExitCode;

use clap::Args;

/// The pod scheduler.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// API server URL, e.g. http://192.168.0.201:8080.
    #[arg(long)]
    pub master: String,
    /// Seed for ties between equally good nodes (reproducible placements).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    crate::client::agent_runtime()?.block_on(crate::scheduler::run(&args.master, args.seed))?;
    Ok(ExitCode::SUCCESS)
}
