//! `kemu exec LAB HOST -- CMD ARGS...`: run a command on an emulated host.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use clap::Args;

use crate::lab::exec::host_command;
use crate::lab::state::LabRecord;

/// Run a command inside a host's namespace (by host name or underlay IP).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Host name or underlay IP, e.g. 192.168.0.202.
    pub host: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let topo = &record.topology;
    let host = record.host(&args.host)?;
    let status = host_command(&dir, &host.name, &topo.host_namespace(host), &args.command)?
        .status()
        .map_err(|e| anyhow::anyhow!("run {:?} on {}: {e}", args.command[0], host.name))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128 + sig as u8),
        _ => ExitCode::FAILURE,
    })
}
