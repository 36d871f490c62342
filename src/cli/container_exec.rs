//! `kemu container-exec --dir <container dir> [--tty] -- cmd...` (hidden): run a command in a
//! running container of the process runtime (see `kemu::runtime::process::exec`).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `kemu container-exec`.
#[derive(Debug, clap::Args)]
pub struct ContainerExecArgs {
    /// The container's directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Make stdin the command's controlling terminal.
    #[arg(long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Run the command; exit with its status.
pub fn run(args: ContainerExecArgs) -> anyhow::Result<ExitCode> {
    crate::runtime::process::exec::helper_main(&args.dir, args.tty, args.command)
}
