//! Command-line interface: one file per subcommand, each with a clap `Args` struct and `run()`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod container_exec;
mod container_shim;
mod image;

/// kemu: a single-host, multi-node Kubernetes emulator on network namespaces.
#[derive(Debug, Parser)]
#[command(name = "kemu", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `kemu=debug`.
    #[arg(long, global = true, env = "KEMU_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Launcher commands first, then the agents that `kemu up` starts.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a built-in container image (started inside containers by the process runtime).
    #[command(hide = true)]
    Image(image::ImageArgs),
    /// Own one container of the process runtime (started by the kubelet).
    #[command(hide = true)]
    ContainerShim(container_shim::ContainerShimArgs),
    /// Run a command in a running container (started by the kubelet for `kubectl exec`).
    #[command(hide = true)]
    ContainerExec(container_exec::ContainerExecArgs),
}

/// Initialise tracing on stderr with the filter given by `--log` / `KEMU_LOG`.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Image(args) => image::run(args),
        Command::ContainerShim(args) => container_shim::run(args),
        Command::ContainerExec(args) => container_exec::run(args),
    }
}
