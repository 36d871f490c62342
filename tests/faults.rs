//! Faults on live labs: each one applied, its effect measured (ping timing and counts, iperf3,
//! TCP connects, the receiver's checksum-error counter), and removed, leaving the rule
//! snapshot, the links, qdiscs and offloads and the root namespace exactly as before. Effects
//! are checked with generous margins: these tests never assert on time.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::{Lab, RootState, fetch_from, run_kemu, serve_in, wait_for};
use kemu::faults::state::{EngineState, FaultState};
use kemu::lab::state::LabDir;
use kemu::netns::NetNs;
use kemu::topology::LabName;

const A: &str = "192.168.0.202";
const B: &str = "192.168.0.203";
const MASTER: &str = "192.168.0.201";

/// `(received, transmitted, average RTT in ms)` of a ping from `from` to `to`.
fn ping(lab: &Lab, from: &str, to: &str, args: &[&str]) -> (u32, u32, Option<f64>, String) {
    let mut argv = vec!["ping", "-q", "-W", "1"];
    argv.extend_from_slice(args);
    argv.push(to);
    let out = lab.exec(from, &argv);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No summary: ping could not send at all (e.g. "Network is unreachable").
    let Some(counts) = text.lines().find(|l| l.contains("packets transmitted")) else {
        return (0, 0, None, text);
    };
    // `5 packets transmitted, 3 received, ...`: the number before each word.
    let num = |word: &str| -> u32 {
        let words: Vec<&str> = counts.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word).unwrap();
        let back = if word == "transmitted" { 2 } else { 1 };
        words[i - back].parse().unwrap()
    };
    let avg = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    (num("received"), num("transmitted"), avg, text)
}

/// Everything of a host's network that a fault may change and must give back.
fn host_net(lab: &Lab, host: &str) -> String {
    let ns = lab.ns(host);
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, cmd])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // `ip -d` would show the bridge's timers; offloads are in `ethtool -k`.
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        run("ip", &["link", "show"]),
        run("tc", &["qdisc", "show"]),
        run("ethtool", &["-k", "eth0"]),
        run("ethtool", &["-k", "cbr0"]),
        run("ethtool", &["-k", "flannel.1"]),
        run("nft", &["list", "ruleset"])
    )
}

fn snapshot(lab: &Lab) -> String {
    String::from_utf8(run_kemu(&["snapshot", &lab.name]).stdout).unwrap()
}

fn faults(lab: &Lab) -> FaultState {
    let dir = LabDir::new(&LabName::parse(&lab.name).unwrap()).unwrap();
    FaultState::load(&dir).unwrap()
}

fn status(lab: &Lab) -> String {
    String::from_utf8(run_kemu(&["status", &lab.name]).stdout).unwrap()
}

#[test]
fn link_faults_have_their_effect_and_clear_leaves_no_trace() {
    let lab = Lab::up("topologies/seed.yaml", "flk", &["--network-only"]);
    let root = RootState::capture();
    let rules = snapshot(&lab);
    let net = host_net(&lab, A);

    let (got, sent, base_rtt, _) = ping(&lab, A, B, &["-c", "5", "-i", "0.05"]);
    assert_eq!(got, sent);
    assert!(base_rtt.unwrap() < 20.0);

    // Delay: every packet leaving A waits 100 ms.
    run_kemu(&["link", &lab.name, A, "--delay", "100ms"]);
    let (got, sent, rtt, text) = ping(&lab, A, B, &["-c", "5", "-i", "0.05"]);
    assert_eq!(got, sent, "{text}");
    assert!(rtt.unwrap() >= 90.0, "delay 100ms, but {text}");
    assert!(status(&lab).contains(&format!("link {A}:eth0: delay 100ms")));
    let engine_pid = match &faults(&lab).link(A, "eth0").unwrap().engine {
        Some(EngineState::Userspace { queue: Some(q), .. }) => Some(q.process.clone()),
        _ => None,
    };

    // Jitter and reordering: packets sent without the delay overtake the delayed ones.
    run_kemu(&[
        "link",
        &lab.name,
        A,
        "--delay",
        "50ms±10ms",
        "--reorder",
        "50%",
    ]);
    let out = lab.exec(A, &["ping", "-c", "40", "-i", "0.01", "-W", "1", B]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        rtts.iter().any(|r| *r < 20.0) && rtts.iter().any(|r| *r >= 35.0),
        "reorder 50% with delay 50ms±10ms: some replies fast, some slow: {rtts:?}"
    );

    // Loss (and the delay removed with 0ms): about half of 200 pings are lost.
    run_kemu(&[
        "link",
        &lab.name,
        A,
        "--delay",
        "0ms",
        "--reorder",
        "0%",
        "--loss",
        "50%",
    ]);
    let (got, sent, _, text) = ping(&lab, A, B, &["-c", "200", "-i", "0.002"]);
    assert_eq!(sent, 200);
    assert!((40..=160).contains(&got), "loss 50%: {text}");

    // Duplication: every reply is seen twice.
    run_kemu(&["link", &lab.name, A, "--loss", "0%", "--duplicate", "100%"]);
    let out = lab.exec(A, &["ping", "-c", "5", "-i", "0.1", "-W", "1", B]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| l.contains("DUP!")).count() >= 3,
        "duplicate 100%: {text}"
    );

    // Corruption: the receiver drops the damaged packets as checksum errors.
    run_kemu(&[
        "link",
        &lab.name,
        A,
        "--duplicate",
        "0%",
        "--corrupt",
        "100%",
    ]);
    let csum_errors = || -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(B),
                "nstat",
                "-az",
                "IpExtInCsumErrors",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("IpExtInCsumErrors"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = csum_errors();
    let (got, _, _, text) = ping(&lab, A, B, &["-c", "5", "-i", "0.05"]);
    assert_eq!(got, 0, "corrupt 100%: {text}");
    assert!(
        csum_errors() >= before + 5,
        "the receiver counted no checksum errors"
    );

    // Rate: iperf3 through a 10 Mbit/s link.
    run_kemu(&["link", &lab.name, A, "--corrupt", "0%", "--rate", "10mbit"]);
    let server = lab.exec(B, &["iperf3", "-s", "-D", "-1"]);
    assert!(server.status.success());
    let mbps = wait_for("iperf3", Duration::from_secs(10), || {
        let out = lab.exec(A, &["iperf3", "-c", B, "-t", "2", "-J"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e6)
    });
    assert!(
        mbps < 15.0 && mbps > 1.0,
        "rate 10mbit, measured {mbps} Mbit/s"
    );

    // MTU: a 1200-byte packet that may not be fragmented no longer fits; the offloads are off.
    run_kemu(&["link", &lab.name, A, "--mtu", "1000"]);
    let (got, _, _, text) = ping(&lab, A, B, &["-c", "1", "-s", "1200", "-M", "do"]);
    assert_eq!(got, 0, "mtu 1000: {text}");
    let k = Command::new("ip")
        .args(["netns", "exec", &lab.ns(A), "ethtool", "-k", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&k.stdout).contains("generic-segmentation-offload: off"),
        "GSO still on"
    );

    // Down and up.
    run_kemu(&["link", &lab.name, A, "--down"]);
    assert_eq!(ping(&lab, A, B, &["-c", "1"]).0, 0);
    run_kemu(&["link", &lab.name, A, "--up"]);
    let (got, _, _, text) = ping(&lab, A, B, &["-c", "1"]);
    assert_eq!(got, 1, "link up again: {text}");

    // Clear: nothing of it is left.
    run_kemu(&["link", &lab.name, A, "--clear"]);
    assert!(faults(&lab).is_empty());
    assert_eq!(snapshot(&lab), rules);
    assert_eq!(host_net(&lab, A), net);
    assert_eq!(RootState::capture(), root);
    if let Some(p) = engine_pid {
        assert!(!p.is_alive(), "the delay line {} still runs", p.pid);
    }
    assert!(!status(&lab).contains("faults"));
    let (got, sent, _, _) = ping(&lab, A, B, &["-c", "5", "-i", "0.05"]);
    assert_eq!(got, sent);
}

/// A UDP socket bound in a namespace; `received` counts datagrams within a short wait.
fn udp_in(ns: &str, addr: &str) -> UdpSocket {
    let handle = NetNs::open(ns).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let sock = handle.run(move || UdpSocket::bind(addr)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock
}

/// Send one datagram; a local drop (EPERM from the partition's output rule) is not an error.
fn udp_send(ns: &str, from: &str, to: &str) {
    let handle = NetNs::open(ns).unwrap();
    let (from, to) = (from.to_string(), to.to_string());
    let _ = handle.run(move || {
        let s = UdpSocket::bind(format!("{from}:0"))?;
        s.send_to(b"hello", to).map(|_| ())
    });
}

fn udp_arrives(sock: &UdpSocket) -> bool {
    let mut buf = [0u8; 16];
    sock.recv_from(&mut buf).is_ok()
}

#[test]
fn partitions_cut_the_chosen_plane_and_heal_leaves_no_trace() {
    let lab = Lab::up("topologies/seed.yaml", "fpt", &["--network-only"]);
    let root = RootState::capture();
    let rules = snapshot(&lab);
    // A stand-in API server on the master's API port, and a data-plane service on B.
    let api = serve_in(&lab.ns(MASTER), &format!("{MASTER}:8080"), "api");
    let data = serve_in(&lab.ns(B), &format!("{B}:9000"), "data");
    let t = Duration::from_millis(500);
    let reach = |addr| fetch_from(&lab.ns(A), addr, t).is_ok();
    assert!(reach(api) && reach(data));

    // Control plane: A loses the API server, keeps the rest.
    run_kemu(&["partition", &lab.name, A, "--plane", "control"]);
    assert!(
        !reach(api),
        "control-plane partition: the API is still reachable"
    );
    assert!(reach(data), "control-plane partition cut the data plane");
    assert!(status(&lab).contains("partition (control plane)"));
    run_kemu(&["heal", &lab.name]);
    assert_eq!(snapshot(&lab), rules);

    // Data plane: the API stays, the rest goes.
    run_kemu(&["partition", &lab.name, A, "--plane", "data"]);
    assert!(reach(api), "data-plane partition cut the API");
    assert!(!reach(data), "data-plane partition: B is still reachable");
    assert_eq!(ping(&lab, A, B, &["-c", "1"]).0, 0);
    run_kemu(&["heal", &lab.name]);
    assert!(reach(data));

    // One way, from A to B only: B's datagrams still reach A, A's no longer reach B.
    run_kemu(&["partition", &lab.name, A, "--from", B, "--one-way"]);
    let at_a = udp_in(&lab.ns(A), &format!("{A}:9100"));
    let at_b = udp_in(&lab.ns(B), &format!("{B}:9100"));
    udp_send(&lab.ns(B), B, &format!("{A}:9100"));
    assert!(udp_arrives(&at_a), "one-way partition cut B -> A");
    udp_send(&lab.ns(A), A, &format!("{B}:9100"));
    assert!(!udp_arrives(&at_b), "one-way partition let A -> B through");
    // Hosts outside the partition are not cut.
    assert!(fetch_from(&lab.ns(A), api, t).is_ok());

    run_kemu(&["heal", &lab.name]);
    assert!(faults(&lab).is_empty());
    assert_eq!(snapshot(&lab), rules);
    assert_eq!(RootState::capture(), root);
    udp_send(&lab.ns(A), A, &format!("{B}:9100"));
    assert!(udp_arrives(&at_b));
}

fn node_ready(lab: &Lab, node: &str) -> String {
    lab.jsonpath(
        &format!("node/{node}"),
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    )
}

fn agent_pid(lab: &Lab, host: &str, agent: &str) -> Option<i64> {
    let out = run_kemu(&["status", &lab.name, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["agents"]
        .as_array()?
        .iter()
        .find(|a| a["host"] == host && a["name"] == agent && a["state"] == "running")
        .and_then(|a| a["pid"].as_i64())
}

#[test]
fn node_stop_freezes_the_host_and_start_brings_it_back() {
    let lab = Lab::up("topologies/seed.yaml", "fnd", &[]);
    let root = RootState::capture();
    wait_for("node B ready", Duration::from_secs(60), || {
        (node_ready(&lab, B) == "True").then_some(())
    });
    let rules = snapshot(&lab);
    let cgroup = kemu::lab::cgroup::LabCgroup::of(&LabName::parse(&lab.name).unwrap())
        .expect("cgroup v2")
        .host(B);

    run_kemu(&["node", "stop", &lab.name, B]);
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    assert_eq!(
        ping(&lab, A, B, &["-c", "1"]).0,
        0,
        "a stopped node answers"
    );
    assert!(status(&lab).contains(&format!("node {B}: stopped")));
    // Its kubelet no longer reports: the node lifecycle controller marks it NotReady.
    wait_for("node B not ready", Duration::from_secs(90), || {
        (node_ready(&lab, B) == "Unknown").then_some(())
    });

    run_kemu(&["node", "start", &lab.name, B]);
    let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");
    assert_eq!(ping(&lab, A, B, &["-c", "1"]).0, 1);
    wait_for("node B ready again", Duration::from_secs(90), || {
        (node_ready(&lab, B) == "True").then_some(())
    });
    assert!(faults(&lab).is_empty());

    // An agent crash: the supervisor starts the kubelet again under a new PID.
    let before = agent_pid(&lab, A, "kubelet").expect("kubelet runs");
    run_kemu(&["agent", "kill", &lab.name, A, "kubelet"]);
    let after = wait_for("kubelet restarted", Duration::from_secs(30), || {
        agent_pid(&lab, A, "kubelet").filter(|p| *p != before)
    });
    let out = run_kemu(&["agent", "restart", &lab.name, A, "kubelet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("pid {after} -> ")), "{text}");
    let unknown = kemu()
        .args(["agent", "kill", &lab.name, A, "nosuch"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("kubelet"));

    assert_eq!(snapshot(&lab), rules);
    assert_eq!(RootState::capture(), root);
}

use common::kemu;
