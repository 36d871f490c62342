//! `kemu generate --hosts N`: write an N-host topology for scale tests and benchmarks.

use std::process::ExitCode;

use clap::Args;

use crate::topology::generate::{GenerateOptions, generate};

/// Print an N-host topology file.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of cluster hosts (the first is master and minion).
    #[arg(long)]
    pub hosts: usize,
    /// Spread the hosts over this many segments joined by a router.
    #[arg(long, default_value_t = 1)]
    pub segments: usize,
    /// Lab name.
    #[arg(long, default_value = "scale")]
    pub name: String,
    /// Add an outside client host per segment.
    #[arg(long)]
    pub clients: bool,
    /// Proxy mode.
    #[arg(long, default_value = "iptables")]
    pub proxy_mode: String,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.hosts >= 1, "--hosts must be at least 1");
    print!(
        "{}",
        generate(&GenerateOptions {
            name: args.name,
            hosts: args.hosts,
            segments: args.segments,
            clients: args.clients,
            proxy_mode: args.proxy_mode,
        })
    );
    Ok(ExitCode::SUCCESS)
}
