//! `kemu graph`: the picture in docs/ is what the command draws now, and on a running lab the
//! picture shows each node's pods (with their addresses, in their node's box) and each host's
//! live proxy mode, also after `kemu proxy mode`. (The formats' snapshots are unit tests in
//! src/graph; the exit codes are in tests/cli_exit_codes.rs.)

mod common;

use std::time::Duration;

use common::{Lab, run_kemu, wait_for};

fn stdout(args: &[&str]) -> String {
    String::from_utf8(run_kemu(args).stdout).unwrap()
}

#[test]
fn the_svg_in_docs_is_up_to_date() {
    let drawn = stdout(&["graph", "topologies/seed.yaml", "--format", "svg"]);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/seed.svg")).unwrap();
    assert!(
        drawn == committed,
        "docs/seed.svg is stale: `kemu graph topologies/seed.yaml --format svg > docs/seed.svg`"
    );
}

/// The DOT box of a host: its label's lines.
fn box_of(dot: &str, host: &str) -> Vec<String> {
    let line = dot
        .lines()
        .find(|l| l.contains(&format!("[label=\"{host}\\l")))
        .unwrap_or_else(|| panic!("no box for {host} in:\n{dot}"));
    let label = line.split("label=\"").nth(1).unwrap();
    let label = &label[..label.find("\", fillcolor").unwrap()];
    label
        .split("\\l")
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn a_running_lab_shows_its_pods_and_live_proxy_modes() {
    let lab = Lab::up("topologies/seed.yaml", "gr", &["--seed", "2015"]);
    let kubectl = |args: &[&str]| -> String {
        let mut argv = vec!["kubectl", "-s", "http://192.168.0.201:8080"];
        argv.extend_from_slice(args);
        let out = lab.exec("192.168.0.201", &argv);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    kubectl(&[
        "create",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed/nginx-rc.yaml"),
    ]);
    // name node ip, once both pods run.
    let pods: Vec<Vec<String>> = wait_for("2 nginx pods Running", Duration::from_secs(60), || {
        let out = kubectl(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase}{\"\\n\"}{end}",
        ]);
        let pods: Vec<Vec<String>> = out
            .lines()
            .map(|l| l.split(' ').map(String::from).collect())
            .collect();
        (pods.len() == 2 && pods.iter().all(|p| p[3] == "Running")).then_some(pods)
    });
    run_kemu(&[
        "proxy",
        "mode",
        &lab.name,
        "iptables",
        "--host",
        "192.168.0.203",
    ]);
    let dot = wait_for(
        "192.168.0.203 drawn in the iptables mode",
        Duration::from_secs(30),
        || {
            let dot = stdout(&["graph", &lab.name, "--format", "dot"]);
            box_of(&dot, "192.168.0.203")
                .contains(&"proxy iptables".to_string())
                .then_some(dot)
        },
    );
    for host in ["192.168.0.201", "192.168.0.202", "192.168.0.203"] {
        let lines = box_of(&dot, host);
        let mode = if host == "192.168.0.203" {
            "iptables"
        } else {
            "userspace"
        };
        assert!(
            lines.contains(&format!("proxy {mode}")),
            "{host}: {lines:?}"
        );
        // Exactly the pods bound to this node, each with its address.
        let want: Vec<String> = pods
            .iter()
            .filter(|p| p[1] == host)
            .map(|p| format!("- {} {}", p[0], p[2]))
            .collect();
        let shown: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("- "))
            .cloned()
            .collect();
        assert_eq!(shown, want, "{host}");
    }
    assert!(
        !box_of(&dot, "client")
            .iter()
            .any(|l| l.starts_with("proxy")),
        "a client runs no proxy"
    );
    // The other formats draw the same boxes.
    let svg = stdout(&["graph", &lab.name, "--format", "svg"]);
    let mermaid = stdout(&["graph", &lab.name]);
    for p in &pods {
        let line = format!("- {} {}", p[0], p[2]);
        assert!(svg.contains(&line), "{line} not in the SVG");
        assert!(mermaid.contains(&line), "{line} not in the Mermaid");
    }
}
