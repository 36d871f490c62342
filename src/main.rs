//! The `kemu` binary: parse the command line, set up logging, run, map errors to exit codes.
//! Launcher and agents are the same binary; see `kemu::cli` for the subcommands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kemu::cli::Cli::parse();
    // Commands behave like other command-line tools when the reader of their output goes away
    // (`kemu up --dry-run | head`): they die quietly instead of panicking; and the programs a
    // container shim or `kemu exec` starts get the default disposition every program expects.
    // Servers keep Rust's SIGPIPE-ignored default: a client hanging up must not kill them.
    if !cli.command.is_server() {
        // SAFETY: restoring a default signal disposition at start-up, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Labs open many namespaces, sockets and watches: use the whole allowance of file
    // descriptors the administrator granted (the soft limit is often far below the hard one).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    kemu::cli::init_tracing(&cli);
    match kemu::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            kemu::cli::exit::exit_code(&err)
        }
    }
}
