//! `kemu kubeconfig LAB [--write [--kubeconfig FILE]]`: print the lab's kubeconfig, or add its
//! `kemu-<lab>` context to a kubeconfig and make it current, as `kind export kubeconfig` does:
//! under sudo the file is the invoking user's (`$KUBECONFIG` or `~/.kube/config`) and stays
//! theirs; `kemu down` removes the context and makes the one that was current before current
//! again (`lab::kubeconfig` has the machinery, shared with `up`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::lab::kubeconfig::{Credentials, add, context_name, default_path};
use crate::lab::pki::LabPki;
use crate::lab::state::LabRecord;

/// Print a lab's kubeconfig, or add it to yours.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Add the lab's context to a kubeconfig and make it current (`kemu down` undoes it).
    #[arg(long)]
    pub write: bool,
    /// The kubeconfig to write (default: $KUBECONFIG, or ~/.kube/config of the user who ran sudo).
    #[arg(long, requires = "write")]
    pub kubeconfig: Option<PathBuf>,
}

pub fn run(args: KubeconfigArgs) -> anyhow::Result<ExitCode> {
    let (dir, mut record) = LabRecord::open(&args.lab)?;
    let Some(port) = record.api_port else {
        return Err(super::exit::usage(format!(
            "lab {} runs no API server (it was started with --network-only), so it has no kubeconfig",
            args.lab
        )));
    };
    if !args.write {
        let text = dir
            .owner
            .read_to_string(&dir.kubeconfig())
            .with_context(|| format!("read {}", dir.kubeconfig().display()))?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.kubeconfig.or_else(default_path).context(
        "no kubeconfig to write: neither $KUBECONFIG nor $HOME is set (name one with --kubeconfig)",
    )?;
    // `down` cleans up one kubeconfig: the one `up` (or an earlier --write) recorded.
    if let Some(recorded) = &record.kubeconfig
        && recorded != &path
    {
        return Err(super::exit::usage(format!(
            "lab {} is already in {} (where `kemu down` will remove it); write that file, or take the lab down first",
            args.lab,
            recorded.display()
        )));
    }
    let pki = LabPki::load(&dir)?;
    let creds = Credentials {
        server: format!("https://127.0.0.1:{port}"),
        pki: &pki,
    };
    // Recorded before the edit, as `up` does: `down` must clean up even if we die now.
    let first = record.kubeconfig.is_none();
    record.kubeconfig = Some(path.clone());
    record.save(&dir).context("write lab.json")?;
    let previous = add(&path, &args.lab, &creds).with_context(|| {
        format!(
            "add context {} to {}",
            context_name(&args.lab),
            path.display()
        )
    })?;
    // Writing again keeps the context to give back from the first time.
    if first || record.previous_context.is_none() {
        record.previous_context = previous;
    }
    record.save(&dir).context("write lab.json")?;
    println!(
        "context {} added to {} and made current{}",
        context_name(&args.lab),
        path.display(),
        match &record.previous_context {
            Some(p) => format!("; `kemu down {}` makes {p} current again", args.lab),
            None => format!("; `kemu down {}` removes it", args.lab),
        }
    );
    Ok(ExitCode::SUCCESS)
}
