//! Snapshots of the rendered rules of every fixture in `tests/fixtures/proxy/` in each proxy
//! mode, for node `node-1` of the seed lab, and a check that the built `kemu proxy render`
//! prints exactly what the library renders.

use std::path::{Path, PathBuf};
use std::process::Command;

use kemu::cli::proxy::{DEFAULT_SEED, RenderArgs, render_file};
use kemu::proxy::{ProxyMode, jump_rules};

const CASES: [&str; 11] = [
    "clusterip",
    "nodeport",
    "multiport",
    "affinity",
    "etp-local",
    "itp-local",
    "no-endpoints",
    "headless",
    "many-endpoints",
    "external-ips",
    "loadbalancer",
];
const MODES: [ProxyMode; 3] = [
    ProxyMode::Userspace,
    ProxyMode::Iptables,
    ProxyMode::Nftables,
];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxy")
        .join(format!("{case}.yaml"))
}

fn args(case: &str, mode: ProxyMode) -> RenderArgs {
    RenderArgs {
        mode,
        node_name: "node-1".into(),
        node_ips: vec!["192.168.0.201".parse().unwrap()],
        cluster_cidr: Some("172.16.0.0/16".parse().unwrap()),
        service_cidrs: vec!["192.168.3.0/24".parse().unwrap()],
        masquerade_all: false,
        file: fixture(case),
        seed: DEFAULT_SEED,
        previous: None,
        kube_proxy_version: None,
    }
}

fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(true);
    settings
}

#[test]
fn rendered_rules_of_every_fixture() {
    settings().bind(|| {
        for case in CASES {
            for mode in MODES {
                let (text, _) = render_file(&args(case, mode)).unwrap();
                insta::assert_snapshot!(format!("{case}__{}", mode.as_str()), text);
            }
        }
    });
}

#[test]
fn jump_rules_of_each_mode() {
    settings().bind(|| {
        for mode in MODES {
            let text: String = jump_rules(mode)
                .iter()
                .map(|r| format!("{} {:?} {}\n", r.table, r.position, r.save_line()))
                .collect();
            insta::assert_snapshot!(format!("jump_rules__{}", mode.as_str()), text);
        }
    });
}

#[test]
fn headless_and_external_name_services_produce_no_service_rules() {
    let (iptables, warnings) = render_file(&args("headless", ProxyMode::Iptables)).unwrap();
    assert!(
        !iptables.contains("default/db") && !iptables.contains("default/search"),
        "{iptables}"
    );
    assert_eq!(
        warnings,
        vec!["ignoring Pod default/db-0: the proxy only reads Services and EndpointSlices"]
    );
    let (userspace, _) = render_file(&args("headless", ProxyMode::Userspace)).unwrap();
    assert_eq!(userspace.lines().filter(|l| l.starts_with("-A")).count(), 0);
}

#[test]
fn cli_prints_what_the_library_renders() {
    for (case, mode) in [
        ("nodeport", ProxyMode::Userspace),
        ("loadbalancer", ProxyMode::Iptables),
        ("headless", ProxyMode::Nftables),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_kemu"))
            .args([
                "proxy",
                "render",
                "--mode",
                mode.as_str(),
                "--node-name",
                "node-1",
            ])
            .args([
                "--node-ip",
                "192.168.0.201",
                "--cluster-cidr",
                "172.16.0.0/16",
                "--service-cidr",
                "192.168.3.0/24",
            ])
            .arg("-f")
            .arg(fixture(case))
            .output()
            .expect("run kemu");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (expected, warnings) = render_file(&args(case, mode)).unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            expected,
            "{case} {mode:?}"
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        for w in warnings {
            assert!(
                stderr.contains(&w),
                "warning {w:?} missing from stderr: {stderr}"
            );
        }
    }
}

#[test]
fn cli_names_the_file_it_cannot_read() {
    let output = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args([
            "proxy",
            "render",
            "--mode",
            "iptables",
            "--node-name",
            "n",
            "--node-ip",
            "10.0.0.1",
        ])
        .args(["-f", "/nonexistent/objects.yaml"])
        .output()
        .expect("run kemu");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot read /nonexistent/objects.yaml"),
        "{stderr}"
    );
}
