//! `kemu proxy render --previous OLD.yaml -f NEW.yaml`: the restore input kube-proxy's partial
//! sync writes for a change, snapshotted for the steps of kube-proxy's own
//! `TestSyncProxyRulesRepeated` (`pkg/proxy/iptables/proxier_test.go`; their equality with
//! upstream's expectations is checked in `tests/proxy_upstream.rs`), and through the built
//! binary.

use std::path::{Path, PathBuf};
use std::process::Command;

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
fn partial_restore_is_only_for_iptables_mode() {
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
