//! The built-in `pause` image (`registry.k8s.io/pause`): sleep until SIGINT or SIGTERM, then
//! exit 0; meanwhile reap any child that ends, since as a pod's first process it may inherit
//! orphans. `-v` prints the version, as the real one does.

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// The upstream version this stands in for.
const VERSION: &str = "v3.10";

/// `kemu builtin-image pause [-v]`.
pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    if args.first().map(String::as_str) == Some("-v") {
        println!("pause.c {VERSION}");
        return Ok(ExitCode::SUCCESS);
    }
    if std::process::id() != 1 {
        eprintln!("Warning: pause should be the first process");
    }
    // No threads: block the signals and take them one at a time with sigwait.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        signals.add(signal);
    }
    signals.thread_block()?;
    loop {
        match signals.wait()? {
            Signal::SIGCHLD => reap_children(),
            signal => {
                let name = match signal {
                    Signal::SIGINT => "Interrupt",
                    _ => "Terminated",
                };
                println!("Shutting down, got signal: {name}");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn reap_children() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
