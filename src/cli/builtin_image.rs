//! `kemu builtin-image <name> [args...]` (hidden): run a built-in container image. The process runtime
//! starts this inside a container for images such as `nginx` and `agnhost`.

use std::process::ExitCode;

/// Arguments of `kemu builtin-image`.
#[derive(Debug, clap::Args)]
pub struct BuiltinImageArgs {
    /// The built-in image: nginx, agnhost or pause.
    pub name: String,
    /// The image's own arguments (e.g. `netexec --http-port=8080`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Run the image's program until it exits.
pub fn run(args: BuiltinImageArgs) -> anyhow::Result<ExitCode> {
    crate::images::run(&args.name, args.args)
}
