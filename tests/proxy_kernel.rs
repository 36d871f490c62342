//! Tier 1: the kernel accepts what we render. Each fixture's rules are applied with
//! `iptables-restore --noflush --counters` / `nft -f -` inside a fresh network namespace
//! (`unshare -n`, one per apply), so the host's own rules are never touched. Needs root, as CI
//! has; without it the test fails rather than skipping.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use kemu::cli::proxy::{DEFAULT_SEED, RenderArgs, render_file};
use kemu::proxy::{ProxyMode, RESTORE_ARGS};

fn apply_in_private_netns(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new("unshare")
        .arg("-n")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run unshare -n {program}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rendered_rules_apply_in_a_private_namespace() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proxy");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "fixtures missing in {}", dir.display());
    let mut failures = Vec::new();
    for file in cases {
        for mode in [
            ProxyMode::Userspace,
            ProxyMode::Iptables,
            ProxyMode::Nftables,
        ] {
            let args = RenderArgs {
                mode,
                node_name: "node-1".into(),
                node_ips: vec!["192.168.0.201".parse().unwrap()],
                cluster_cidr: Some("172.16.0.0/16".parse().unwrap()),
                service_cidrs: vec!["192.168.3.0/24".parse().unwrap()],
                masquerade_all: false,
                file: file.clone(),
                seed: DEFAULT_SEED,
            };
            let (text, _) = render_file(&args).unwrap();
            let result = match mode {
                ProxyMode::Nftables => apply_in_private_netns("nft", &["-f", "-"], &text),
                _ => apply_in_private_netns("iptables-restore", RESTORE_ARGS, &text),
            };
            if let Err(err) = result {
                failures.push(format!("{} {mode:?}: {err}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rejected by the kernel:\n{}",
        failures.join("\n")
    );
}
