//! Documentation made from the clap definitions, so it cannot drift from them:
//! `kemu completions SHELL` (clap_complete) and `kemu man [--dir DIR]` (clap_mangen).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};

/// Print a shell completion script.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell, e.g. `kemu completions bash > /etc/bash_completion.d/kemu`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Print the man page, or write one per command.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kemu.1 and kemu-<command>.1 for every command into this directory instead.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut super::Cli::command(),
        "kemu",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = super::Cli::command();
    match args.dir {
        // Hidden commands (the agents' helpers) get no page, as they get no help line.
        Some(dir) => clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("write the man pages to {}", dir.display()))?,
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}
