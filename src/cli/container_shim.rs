//! `kemu container-shim --spec <file>` (hidden): own one container of the process runtime
//! (see `kemu::runtime::process::shim`).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `kemu container-shim`.
#[derive(Debug, clap::Args)]
pub struct ContainerShimArgs {
    /// The container's spec.json.
    #[arg(long)]
    pub spec: PathBuf,
}

/// Start the container and stay with it until it ends.
pub fn run(args: ContainerShimArgs) -> anyhow::Result<ExitCode> {
    crate::runtime::process::shim::main(&args.spec)
}
