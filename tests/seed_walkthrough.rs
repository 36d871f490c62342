//! The 2015 article, step by step, on `topologies/seed.yaml`: kubectl runs inside the lab
//! against http://192.168.0.201:8080 as in the article; the nginx RC and the two services are
//! the article's manifests (examples/seed/); the proxy runs in each of the three modes.
//!
//! For the userspace mode the four nat chains of 192.168.0.201 must read as the article prints
//! them, line for line, apart from the allocated numbers (ClusterIP, NodePort, proxy port).
//! Every mode gets snapshots of each node's live rules and of the reachability matrix, which
//! must also match tests/fixtures/reach/seed.expect.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Lab, run_kemu, wait_for};

const API: &str = "http://192.168.0.201:8080";
const MASTER: &str = "192.168.0.201";
const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];

/// The article's four rules (its typesetting's `—` and curly quotes put back to `--` and `"`),
/// with the allocated numbers as placeholders. The article's KUBE-NODEPORT-HOST line shows
/// 30975 where the others say 32606: a slip, kube-proxy uses the service's one NodePort.
const ARTICLE_RULES: [&str; 4] = [
    r#"-A KUBE-PORTALS-CONTAINER -d CLUSTER_IP/32 -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 8000 -j REDIRECT --to-ports PROXY_PORT"#,
    r#"-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport NODE_PORT -j REDIRECT --to-ports PROXY_PORT"#,
    r#"-A KUBE-PORTALS-HOST -d CLUSTER_IP/32 -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 8000 -j DNAT --to-destination 192.168.0.201:PROXY_PORT"#,
    r#"-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport NODE_PORT -j DNAT --to-destination 192.168.0.201:PROXY_PORT"#,
];

/// What every mode must reach: everything from inside the cluster; from the outside client
/// only the NodePorts (ClusterIPs and pod IPs are not routed outside the cluster).
const EXPECTED_MATRIX: &str = "tests/fixtures/reach/seed.expect";

fn manifest(name: &str) -> String {
    format!("{}/examples/seed/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl on the master host, as the article runs it.
fn kubectl(lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec!["kubectl", "-s", API];
    argv.extend_from_slice(args);
    let out = lab.exec(MASTER, &argv);
    assert!(
        out.status.success(),
        "kubectl {} failed:\n{}{}",
        args.join(" "),
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

fn curl(lab: &Lab, host: &str, url: &str) -> Option<String> {
    let out = lab.exec(host, &["curl", "-s", "-m", "2", url]);
    out.status.success().then(|| text(&out))
}

/// The rules of `chain` in `nat` for the article's NodePort service.
fn article_rules(nat: &str, chain: &str) -> Vec<String> {
    nat.lines()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .filter(|l| l.contains("default/nginx-service-nodeport:"))
        .map(String::from)
        .collect()
}

/// Replace the allocated numbers of the article's service by the placeholders.
fn placeholders(rule: &str, cluster_ip: &str, node_port: &str) -> String {
    let rule = rule
        .replace(&format!("-d {cluster_ip}/32"), "-d CLUSTER_IP/32")
        .replace(&format!("--dport {node_port} "), "--dport NODE_PORT ");
    let (head, port) = rule.rsplit_once([' ', ':']).expect("rule has a target");
    assert!(port.parse::<u16>().is_ok(), "proxy port in {rule}");
    let sep = &rule[head.len()..head.len() + 1];
    format!("{head}{sep}PROXY_PORT")
}

fn rule_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s
}

/// `rules` with the API server's allocations (the services' ClusterIPs and the NodePort) as
/// placeholders, so that a snapshot shows the rules' shape, not the numbers drawn; nft set
/// elements are sorted again since their order followed the numbers.
fn masked(lab: &Lab, rules: &str) -> String {
    let mut values = Vec::new();
    for (svc, name) in [
        ("nginx-service-clusterip", "CLUSTER_IP_CLUSTERIP_SVC"),
        ("nginx-service-nodeport", "CLUSTER_IP_NODEPORT_SVC"),
    ] {
        let ip = kubectl(
            lab,
            &["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"],
        );
        values.push((ip, name));
    }
    let (_, node_port) = service_numbers(lab);
    values.push((node_port, "NODE_PORT"));
    let mut out = Vec::new();
    let mut elements: Vec<String> = Vec::new();
    for line in rules.lines() {
        let mut line = line.to_string();
        for (value, name) in &values {
            line = replace_token(&line, value, name);
        }
        let element = line.starts_with("\t\t\t") && line.ends_with(',');
        if element {
            elements.push(line);
            continue;
        }
        elements.sort();
        out.append(&mut elements);
        out.push(line);
    }
    elements.sort();
    out.append(&mut elements);
    out.join("\n") + "\n"
}

/// Replace `value` where it stands as a whole number or address (`192.168.3.1` must not
/// match inside `192.168.3.12`, nor `3000` inside `30000`).
fn replace_token(line: &str, value: &str, name: &str) -> String {
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find(value) {
        let tail = &rest[at + value.len()..];
        let mut after = tail.chars();
        let next = after.next();
        let glued_before = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_digit() || c == '.');
        let glued_after = digit(next) || (next == Some('.') && digit(after.next()));
        out.push_str(&rest[..at]);
        out.push_str(if glued_before || glued_after {
            value
        } else {
            name
        });
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Every step of the article in `mode`; returns the lab for mode-specific checks.
fn walkthrough(mode: &str) -> Lab {
    // A fixed seed makes ClusterIPs, NodePorts, proxy ports and placements reproducible.
    let lab = Lab::up(
        "topologies/seed.yaml",
        "sw",
        &["--proxy-mode", mode, "--seed", "2015"],
    );
    let up = text(&lab.up_output);
    assert!(up.contains("Cluster validation succeeded"), "{up}");
    for node in NODES {
        assert!(
            up.lines()
                .any(|l| l.starts_with(node) && l.split_whitespace().nth(1) == Some("Ready")),
            "{node} not Ready in:\n{up}"
        );
    }

    // kubectl create -f nginx-rc.yaml: two pods, Running, on two different nodes.
    let created = kubectl(&lab, &["create", "-f", &manifest("nginx-rc.yaml")]);
    assert_eq!(
        created.trim(),
        "replicationcontroller/nginx-controller created"
    );
    let pods = wait_for("2 nginx pods Running", Duration::from_secs(60), || {
        let out = kubectl(
            &lab,
            &[
                "get",
                "pods",
                "-l",
                "name=nginx",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName}{\"\\n\"}{end}",
            ],
        );
        let pods: Vec<Vec<String>> = out
            .lines()
            .map(|l| l.split(' ').map(String::from).collect())
            .collect();
        (pods.len() == 2 && pods.iter().all(|p| p[1] == "Running")).then_some(pods)
    });
    assert_ne!(pods[0][2], pods[1][2], "replicas share a node: {pods:?}");
    for pod in &pods {
        let suffix = pod[0].strip_prefix("nginx-controller-").expect("rc's name");
        assert!(
            suffix.len() == 5 && suffix.chars().all(|c| c.is_ascii_alphanumeric()),
            "{pod:?}"
        );
        let describe = kubectl(&lab, &["describe", "pod", &pod[0]]);
        let node_line: Vec<&str> = describe
            .lines()
            .find(|l| l.starts_with("Node:"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(
            node_line,
            ["Node:", &format!("{0}/{0}", pod[2])],
            "{describe}"
        );
    }

    // kubectl create -f nginx-service-clusterip.yaml; curl it from 192.168.0.202.
    kubectl(
        &lab,
        &["create", "-f", &manifest("nginx-service-clusterip.yaml")],
    );
    let services = kubectl(&lab, &["get", "service"]);
    let line = |name: &str| {
        services
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in:\n{services}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("kubernetes")[2], "192.168.3.1");
    assert_eq!(line("kubernetes")[4], "443/TCP");
    let clusterip_svc = line("nginx-service-clusterip");
    assert_eq!(clusterip_svc[4], "8001/TCP");
    let url = format!("{}:8001", clusterip_svc[2]);
    let page = wait_for("the ClusterIP answers", Duration::from_secs(30), || {
        curl(&lab, "192.168.0.202", &url)
    });
    assert!(page.contains("<title>Welcome to nginx!</title>"), "{page}");

    // kubectl create -f nginx-service-nodeport.yaml; curl every node from outside.
    kubectl(
        &lab,
        &["create", "-f", &manifest("nginx-service-nodeport.yaml")],
    );
    let describe = kubectl(&lab, &["describe", "service", "nginx-service-nodeport"]);
    let node_port = describe
        .lines()
        .find(|l| l.starts_with("NodePort:"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // The 2015 kubectl printed `<unnamed>` for a port without a name; today's prints
            // `<unset>`.
            matches!(fields.get(1), Some(&"<unnamed>" | &"<unset>")).then(|| fields[2].to_string())
        })
        .unwrap_or_else(|| panic!("NodePort: <unset> NNNNN/TCP in:\n{describe}"));
    let node_port = node_port.strip_suffix("/TCP").expect("tcp").to_string();
    for node in NODES {
        let url = format!("{node}:{node_port}");
        let page = wait_for("the NodePort answers", Duration::from_secs(30), || {
            curl(&lab, "client", &url)
        });
        assert!(page.contains("Welcome to nginx!"), "{url}: {page}");
    }

    // Every source reaches what it should, in every mode.
    reach_as_expected(&lab);
    lab
}

fn reach_as_expected(lab: &Lab) {
    let expect = format!("{}/{EXPECTED_MATRIX}", env!("CARGO_MANIFEST_DIR"));
    // The proxies of all nodes converge within a sync; retry briefly before failing.
    let mut last = None;
    for _ in 0..20 {
        let out = common::kemu()
            .args(["reach", &lab.name, "--expect", &expect, "--timeout", "3s"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = last.unwrap();
    panic!(
        "reachability differs:\n{}{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The normalised live rules of a host.
fn snapshot(lab: &Lab, host: &str) -> String {
    text(&run_kemu(&["snapshot", &lab.name, host]))
}

/// The `*nat` part of a normalised snapshot.
fn nat_table(snapshot: &str) -> String {
    let start = snapshot.find("*nat\n").expect("a nat table");
    let rest = &snapshot[start..];
    rest[..rest.find("COMMIT\n").expect("COMMIT") + "COMMIT\n".len()].to_string()
}

fn service_numbers(lab: &Lab) -> (String, String) {
    let ip = kubectl(
        lab,
        &[
            "get",
            "svc",
            "nginx-service-nodeport",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let port = kubectl(
        lab,
        &[
            "get",
            "svc",
            "nginx-service-nodeport",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    );
    (ip, port)
}

/// Snapshots of every node's live rules (masked) and of the reachability matrix (reached or
/// not; generated pod names as `*`).
fn snapshot_every_node_and_the_matrix(lab: &Lab, mode: &str) {
    for node in NODES {
        let rules = masked(lab, &snapshot(lab, node));
        rule_settings()
            .bind(|| insta::assert_snapshot!(format!("seed_{mode}_rules_{node}"), rules));
    }
    let out = run_kemu(&["reach", &lab.name, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cells = json["cells"].as_array().unwrap();
    let mut lines: Vec<String> = cells
        .iter()
        .map(|c| {
            let target = c["target"].as_str().unwrap();
            let target = match target.split_once("nginx-controller-") {
                Some((head, tail)) => format!("{head}nginx-controller-*{}", &tail[5..]),
                None => target.to_string(),
            };
            format!(
                "{:22} {target:60} {}",
                c["source"].as_str().unwrap(),
                c["result"].as_str().unwrap()
            )
        })
        .collect();
    lines.sort();
    let matrix = lines.join("\n") + "\n";
    rule_settings().bind(|| insta::assert_snapshot!(format!("seed_{mode}_reach"), matrix));
}

#[test]
fn seed_walkthrough_userspace() {
    let lab = walkthrough("userspace");
    snapshot_every_node_and_the_matrix(&lab, "userspace");
    let (cluster_ip, node_port) = service_numbers(&lab);
    let nat = nat_table(&snapshot(&lab, MASTER));
    let chains = [
        "KUBE-PORTALS-CONTAINER",
        "KUBE-NODEPORT-CONTAINER",
        "KUBE-PORTALS-HOST",
        "KUBE-NODEPORT-HOST",
    ];
    let mut ours = Vec::new();
    for chain in chains {
        let rules = article_rules(&nat, chain);
        assert_eq!(rules.len(), 1, "{chain} in:\n{nat}");
        ours.push(rules[0].clone());
    }
    // One proxy port serves the service in all four rules.
    let ports: Vec<&str> = ours
        .iter()
        .map(|r| r.rsplit([' ', ':']).next().unwrap())
        .collect();
    assert!(ports.iter().all(|p| *p == ports[0]), "{ours:#?}");
    let normalised: Vec<String> = ours
        .iter()
        .map(|r| placeholders(r, &cluster_ip, &node_port))
        .collect();
    assert_eq!(normalised, ARTICLE_RULES);

    // Switching modes on the running lab leaves no rule of the old mode on any node.
    for (mode, gone) in [
        ("iptables", "KUBE-PORTALS"),
        ("nftables", "KUBE-SERVICES"),
        ("userspace", "table ip kube-proxy"),
    ] {
        run_kemu(&["proxy", "mode", &lab.name, mode]);
        for node in NODES {
            let rules = snapshot(&lab, node);
            assert!(
                !rules.contains(gone),
                "{gone} left on {node} after switching to {mode}:\n{rules}"
            );
            assert!(rules.contains(&format!("proxy mode {mode}")), "{rules}");
        }
        reach_as_expected(&lab);
    }
}

#[test]
fn seed_walkthrough_iptables() {
    let lab = walkthrough("iptables");
    let nat = nat_table(&snapshot(&lab, MASTER));
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
    ] {
        assert!(nat.contains(&format!(":{chain} -")), "{chain} in:\n{nat}");
    }
    assert!(!nat.contains("KUBE-PORTALS"), "{nat}");
    snapshot_every_node_and_the_matrix(&lab, "iptables");
}

#[test]
fn seed_walkthrough_nftables() {
    let lab = walkthrough("nftables");
    let rules = snapshot(&lab, MASTER);
    let nft = &rules[rules.find("# nftables\n").expect("nftables rules")..];
    assert!(nft.contains("table ip kube-proxy"), "{nft}");
    assert!(!rules.contains("KUBE-"), "{rules}");
    snapshot_every_node_and_the_matrix(&lab, "nftables");
}
