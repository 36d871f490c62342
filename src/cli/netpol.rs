//! `kemu netpol`: NetworkPolicy enforcement.
//!
//! - `kemu netpol --master URL --node-name NAME [--status-file F]` runs the per-node agent
//!   ([`crate::netpol::agent`]); the lab supervisor starts one in every minion's namespace.
//! - `kemu netpol render -f FILE --node-name NAME` prints the table a node's agent would
//!   apply for the Pods, Namespaces and NetworkPolicies of a YAML file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::netpol::{agent, nft, objects};

/// The NetworkPolicy agent: without a subcommand, run it.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NetpolArgs {
    #[command(subcommand)]
    pub command: Option<NetpolCommand>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum NetpolCommand {
    /// Print the nftables table a node would get for the objects in a YAML file.
    Render(RenderArgs),
}

/// The agent's flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// API server URL, e.g. http://192.168.0.201:8080.
    #[arg(long, required = true)]
    pub master: Option<String>,
    /// This node's name: the policies of the pods bound to it are enforced here.
    #[arg(long, required = true)]
    pub node_name: Option<String>,
    /// Where to write the agent's status after every sync (JSON).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Time between periodic syncs when nothing changes.
    #[arg(long, default_value = "30s", value_parser = crate::topology::parse_duration_arg)]
    pub sync_period: Duration,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The node whose table to print.
    #[arg(long)]
    pub node_name: String,
    /// YAML file with Pods, Namespaces and NetworkPolicies (several documents and `kind: List`
    /// allowed).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

/// Run `kemu netpol …`.
pub fn run(args: NetpolArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(NetpolCommand::Render(render)) => {
            let text = std::fs::read_to_string(&render.file)
                .with_context(|| format!("cannot read {}", render.file.display()))?;
            let objects = objects::parse_yaml(&text)
                .with_context(|| format!("in {}", render.file.display()))?;
            for w in &objects.warnings {
                eprintln!("warning: {w}");
            }
            let model = objects.model(Some(&render.node_name));
            print!("{}", nft::render(&model, &render.node_name));
            Ok(ExitCode::SUCCESS)
        }
        None => run_agent(args.agent),
    }
}

/// Run the per-node agent until SIGTERM/SIGINT.
pub fn run_agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    agent::run(agent::Config {
        master: a.master.context("--master is required")?,
        node_name: a.node_name.context("--node-name is required")?,
        status_file: a.status_file,
        sync_period: a.sync_period,
    })?;
    Ok(ExitCode::SUCCESS)
}
