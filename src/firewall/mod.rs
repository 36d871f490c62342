//! The thin layer that talks to the kernel's packet filter: `iptables-restore`, `iptables`
//! and `nft`, run in the caller's network namespace (agents already live in their host's
//! namespace) or in a named one (the launcher, `kemu snapshot`, tests). Rule sets are rendered
//! as text elsewhere, by pure functions; this module only applies and reads them.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::netns::NetNs;

/// A command that runs inside `ns` (or in the current namespace when `None`).
pub fn command(ns: Option<&NetNs>, program: &str) -> Command {
    let mut cmd = Command::new(program);
    if let Some(ns) = ns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd outlives the spawn (borrowed from `ns`).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Run a program with `input` on stdin; fail with its stderr.
pub fn run_with_input(mut cmd: Command, input: &str) -> anyhow::Result<String> {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("run {program}: is it installed? (Debian packages iptables, nftables)")
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a program and return its stdout; fail with its stderr.
pub fn run(mut cmd: Command) -> anyhow::Result<String> {
    let program = format!("{:?}", cmd.get_program());
    let out = cmd
        .output()
        .with_context(|| format!("run {program}: is it installed?"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-restore --noflush` of `input` (chains it declares are flushed, others kept).
pub fn iptables_restore(ns: Option<&NetNs>, input: &str) -> anyhow::Result<()> {
    let mut cmd = command(ns, "iptables-restore");
    cmd.arg("--noflush");
    run_with_input(cmd, input).map(|_| ())
}

/// `nft -f -` of `input`.
pub fn nft_apply(ns: Option<&NetNs>, input: &str) -> anyhow::Result<()> {
    let mut cmd = command(ns, "nft");
    cmd.args(["-f", "-"]);
    run_with_input(cmd, input).map(|_| ())
}

/// Where a rule goes when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Insert at the top of the chain.
    Prepend,
    /// Add at the bottom.
    Append,
}

fn rule_exists(ns: Option<&NetNs>, table: &str, chain: &str, rule: &[String]) -> bool {
    let mut cmd = command(ns, "iptables");
    cmd.args(["-w", "-t", table, "-C", chain])
        .args(rule)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

/// Add a rule to a built-in chain unless it is already there (`iptables -C`, then `-I`/`-A`).
pub fn ensure_rule(
    ns: Option<&NetNs>,
    table: &str,
    chain: &str,
    rule: &[String],
    pos: Position,
) -> anyhow::Result<()> {
    if rule_exists(ns, table, chain, rule) {
        return Ok(());
    }
    let mut cmd = command(ns, "iptables");
    cmd.args(["-w", "-t", table]);
    match pos {
        Position::Prepend => cmd.args(["-I", chain, "1"]),
        Position::Append => cmd.args(["-A", chain]),
    };
    cmd.args(rule);
    run(cmd).map(|_| ())
}

/// Delete every copy of a rule; a missing rule or chain is fine.
pub fn delete_rule(ns: Option<&NetNs>, table: &str, chain: &str, rule: &[String]) {
    while rule_exists(ns, table, chain, rule) {
        let mut cmd = command(ns, "iptables");
        cmd.args(["-w", "-t", table, "-D", chain]).args(rule);
        if run(cmd).is_err() {
            break;
        }
    }
}

/// Flush and delete a chain; a missing chain is fine.
pub fn delete_chain(ns: Option<&NetNs>, table: &str, chain: &str) {
    for flag in ["-F", "-X"] {
        let mut cmd = command(ns, "iptables");
        cmd.args(["-w", "-t", table, flag, chain])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}

/// `iptables-save` output.
pub fn iptables_save(ns: Option<&NetNs>) -> anyhow::Result<String> {
    run(command(ns, "iptables-save"))
}

/// `nft list ruleset` output.
pub fn nft_list(ns: Option<&NetNs>) -> anyhow::Result<String> {
    let mut cmd = command(ns, "nft");
    cmd.args(["list", "ruleset"]);
    run(cmd)
}
