//! `kemu down [LAB]`: tear a lab down from its state directory alone.

use std::process::ExitCode;

use clap::Args;

use crate::lab::state::LabDir;
use crate::lab::teardown::teardown;

/// Tear down a lab (works without the topology file, after a crash, and twice in a row).
#[derive(Debug, Args)]
pub struct DownArgs {
    /// Lab name; may be omitted when exactly one lab exists.
    pub lab: Option<crate::topology::LabName>,
    /// Tear down every lab kemu knows about.
    #[arg(long, conflicts_with = "lab")]
    pub all: bool,
    /// No progress lines on stderr (errors still show).
    #[arg(long, short)]
    pub quiet: bool,
}

fn dir_is_empty(path: &std::path::Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

pub fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    crate::lab::check_privileges()?;
    let labs = if args.all {
        crate::lab::list_labs()
    } else {
        vec![super::pick_lab(args.lab.as_ref())?]
    };
    if !args.quiet {
        super::progress::install();
    }
    let mut failed = false;
    for lab in labs {
        let dir = LabDir::new(&lab)?;
        if !dir.exists() {
            println!("lab {lab} is not up (nothing to do)");
            continue;
        }
        if !dir.is_lab() && !dir_is_empty(&dir.root) {
            failed = true;
            eprintln!(
                "{} is not a kemu lab (it has no {} mark): leaving it alone",
                dir.root.display(),
                crate::lab::state::LAB_MARK
            );
            continue;
        }
        let report = teardown(&dir);
        super::progress::finish();
        if report.errors.is_empty() {
            println!(
                "lab {lab} is down: {} processes stopped, {} namespaces removed",
                report.stopped_processes, report.removed_namespaces
            );
        } else {
            failed = true;
            eprintln!(
                "lab {lab}: teardown incomplete ({} problems):",
                report.errors.len()
            );
            for e in &report.errors {
                eprintln!("  - {e}");
            }
            eprintln!("run `kemu down {lab}` again once the problems are fixed");
        }
    }
    Ok(if failed {
        ExitCode::from(super::exit::FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
