//! `kemu proxy render --previous OLD.yaml -f NEW.yaml`: the restore input (iptables) or the
//! transaction (nftables) kube-proxy's partial sync writes for a change, snapshotted for the
//! steps of kube-proxy's own `TestSyncProxyRulesRepeated` (`pkg/proxy/iptables/proxier_test.go`;
//! their equality with upstream's expectations is checked in `tests/proxy_upstream.rs`; the
//! nftables test of the same name checks only the resulting ruleset, so here the
//! transactions are applied in a private network namespace and must give the full render's
//! ruleset), and through the built binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kemu::cli::proxy::{DEFAULT_SEED, RenderArgs, render_file};
use kemu::proxy::ProxyMode;

const STEPS: [&str; 8] = [
    "0-initial",
    "1-add-svc3",
    "2-delete-svc2",
    "3-add-svc4-without-endpoints",
    "4-add-svc4-endpoints",
    "5-change-svc3-endpoint",
    "6-add-svc3-endpoint",
    "7-no-change",
];

fn step(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxy/upstream/repeated")
        .join(format!("{name}.yaml"))
}

/// `NewFakeProxier`'s node, rendered as kube-proxy 1.31 (both nfacct counters).
fn args(previous: &str, next: &str) -> RenderArgs {
    RenderArgs {
        mode: ProxyMode::Iptables,
        node_name: "test-node".into(),
        node_ips: vec!["192.168.0.2".parse().unwrap()],
        cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
        service_cidrs: vec![],
        masquerade_all: false,
        file: step(next),
        seed: DEFAULT_SEED,
        previous: Some(step(previous)),
        kube_proxy_version: Some("1.31".parse().unwrap()),
    }
}

#[test]
fn sync_proxy_rules_repeated_partial_restores() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.bind(|| {
        for pair in STEPS.windows(2) {
            let (text, warnings) = render_file(&args(pair[0], pair[1])).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            insta::assert_snapshot!(format!("sync_proxy_rules_repeated__{}", pair[1]), text);
        }
    });
}

#[test]
fn nftables_sync_proxy_rules_repeated_partial_transactions() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.bind(|| {
        for pair in STEPS.windows(2) {
            let mut a = args(pair[0], pair[1]);
            a.mode = ProxyMode::Nftables;
            let (text, warnings) = render_file(&a).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            insta::assert_snapshot!(
                format!("nftables_sync_proxy_rules_repeated__{}", pair[1]),
                text
            );
        }
    });
}

/// Runs `nft -f -` on each input in turn in one fresh network namespace, then returns
/// `nft list table ip kube-proxy`, its lines trimmed and sorted (the kernel lists map
/// elements in an order that depends on how they were added).
fn nft_table_after(inputs: &[String]) -> String {
    let mut script = String::new();
    for (i, _) in inputs.iter().enumerate() {
        script.push_str(&format!("nft -f \"$KEMU_NFT_{i}\"\n"));
    }
    script.push_str("nft list table ip kube-proxy\n");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-ec", &script]);
    for (i, input) in inputs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.nft"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        cmd.env(format!("KEMU_NFT_{i}"), &path);
    }
    let out = cmd.stdout(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        inputs.last().unwrap()
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("elements = { ").unwrap_or(l);
            l.trim_end_matches(" }").trim_end_matches(',').to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn nftables_partial_transactions_give_the_full_renders_ruleset() {
    for pair in STEPS.windows(2) {
        let mut full = args(pair[0], pair[1]);
        full.mode = ProxyMode::Nftables;
        full.previous = None;
        let (next, _) = render_file(&full).unwrap();
        full.file = step(pair[0]);
        let (previous, _) = render_file(&full).unwrap();
        let mut a = args(pair[0], pair[1]);
        a.mode = ProxyMode::Nftables;
        let (partial, _) = render_file(&a).unwrap();
        // The chains it flushed, deleted as kube-proxy's next sync does.
        let stale: String = partial
            .lines()
            .filter_map(|l| l.strip_prefix("flush chain "))
            .filter(|c| !partial.contains(&format!("add chain {c}\n")))
            .map(|c| format!("delete chain {c}\n"))
            .collect();
        let mut inputs = vec![previous, partial];
        if !stale.is_empty() {
            inputs.push(stale);
        }
        assert_eq!(
            nft_table_after(&inputs),
            nft_table_after(&[next]),
            "step {}",
            pair[1]
        );
    }
}

#[test]
fn the_userspace_proxier_has_no_partial_syncs() {
    let mut a = args(STEPS[0], STEPS[1]);
    a.mode = ProxyMode::Userspace;
    let err = render_file(&a).unwrap_err().to_string();
    assert!(err.contains("no partial syncs"), "{err}");
}

#[test]
fn the_binary_prints_the_partial_restore() {
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args([
            "proxy",
            "render",
            "--mode",
            "iptables",
            "--node-name",
            "test-node",
        ])
        .args(["--node-ip", "192.168.0.2", "--cluster-cidr", "10.0.0.0/8"])
        .args(["--kube-proxy-version", "1.31", "--previous"])
        .arg(step("4-add-svc4-endpoints"))
        .arg("-f")
        .arg(step("5-change-svc3-endpoint"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (library, _) =
        render_file(&args("4-add-svc4-endpoints", "5-change-svc3-endpoint")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), library);
}
