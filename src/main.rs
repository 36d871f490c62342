//! The `kemu` binary: parse the command line, set up logging, run, map errors to exit codes.
//! Launcher and agents are the same binary; see `kemu::cli` for the subcommands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Behave like other command-line tools when the reader of our output goes away
    // (`kemu up --dry-run | head`): die quietly instead of panicking.
    // SAFETY: restoring a default signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = kemu::cli::Cli::parse();
    kemu::cli::init_tracing(&cli);
    match kemu::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
