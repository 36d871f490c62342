//! Benchmark of NetworkPolicy enforcement (issue 15): a lab of three nodes with a pod on each
//! (an iperf3 server, an iperf3 client, an idle pod), then 1,000 NetworkPolicies over them
//! (each pod isolated both ways by about 333 policies of ipBlock, namespace-selector and port
//! rules, every one with a set of its own), plus one policy last in name order that lets the
//! client reach the server on 5201.
//!
//! 1. Policy change to enforcement: a policy selecting the pods of every node is created,
//!    then patched again and again; each write's time from just before its API request to
//!    the moment the last node's agent has the table in the kernel (its status file: the
//!    policy's resourceVersion applied, and when).
//! 2. iperf3 from the client pod to the server pod (across the overlay), the two pods
//!    alternately selected by their 334 policies each and relabelled out of them: a
//!    connection's first packet goes through ~333 policy chains on each side before the
//!    allowing one, the rest through conntrack.
//!
//! Needs root (it builds a lab) and iperf3. Writes its section of BENCHMARKS.md.
//!
//!     sudo cargo bench --bench netpol

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{LabApi, api, lab_api, write_section};
use kemu::netns::NetNs;
use kemu::netpol::agent::NetpolStatus;

const LAB: &str = "npbench";
const HOSTS: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
/// The pod of each host, by its `app` label.
const APPS: [&str; 3] = ["idle", "iperf-server", "iperf-client"];
const POLICIES: usize = 1000;
const CHANGES: usize = 30;
const IPERF_ROUNDS: usize = 5;
const IPERF_SECONDS: u32 = 3;
const POLICY_PATH: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";

const TOPOLOGY: &str = "name: npbench
segments: [{name: lan, cidr: 192.168.0.0/24}]
hosts:
  - {name: 192.168.0.201, ip: 192.168.0.201, roles: [master, minion]}
  - {name: 192.168.0.202, ip: 192.168.0.202, roles: [minion]}
  - {name: 192.168.0.203, ip: 192.168.0.203, roles: [minion]}
services: {clusterIPRange: 10.96.0.0/16}
clusterNetwork: {network: 172.16.0.0/16}
proxy: {mode: iptables}
dns: {enabled: false}
";

fn kemu(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(args)
        .output()
        .expect("run kemu");
    assert!(
        out.status.success(),
        "kemu {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(
    lab: LabApi,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    want: u16,
) -> serde_json::Value {
    let (code, text) = api(lab, method, path, Some(&body.to_string()));
    assert_eq!(code, want, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn resource_version(obj: &serde_json::Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a numeric resourceVersion")
}

/// Pod name → (IP, network namespace), once all three run.
fn running_pods(lab: LabApi) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api(lab, "GET", "/api/v1/namespaces/default/pods", None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let pods: Vec<(String, String)> = APPS
            .iter()
            .filter_map(|app| {
                let pod = v["items"]
                    .as_array()?
                    .iter()
                    .find(|p| p["metadata"]["name"] == *app && p["status"]["phase"] == "Running")?;
                Some((
                    pod["status"]["podIP"].as_str()?.to_string(),
                    kemu::kubelet::sandbox::pod_namespace(LAB, pod["metadata"]["uid"].as_str()?),
                ))
            })
            .collect();
        if pods.len() == APPS.len() {
            return pods;
        }
        assert!(Instant::now() < deadline, "the pods never all ran: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_files() -> Vec<PathBuf> {
    let name = kemu::topology::LabName::parse(LAB).unwrap();
    let (dir, _) = kemu::lab::state::LabRecord::open(&name).unwrap();
    HOSTS.iter().map(|h| dir.netpol_status_file(h)).collect()
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

/// Wait until every node's agent has applied policy version `rv`; their statuses.
fn wait_applied(files: &[PathBuf], rv: u64, timeout: Duration) -> Vec<NetpolStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses: Vec<Option<NetpolStatus>> =
            files.iter().map(|f| NetpolStatus::read(f)).collect();
        if statuses.iter().all(|s| {
            s.as_ref()
                .is_some_and(|s| s.applied_policy_version >= rv && s.error.is_none())
        }) {
            return statuses.into_iter().map(Option::unwrap).collect();
        }
        assert!(
            Instant::now() < deadline,
            "policy version {rv} not applied on every node: {statuses:?}"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Policy `i` of the 1,000: it isolates one of the pods both ways, with two ingress peers
/// (a /24 and a namespace label) on a numbered and a named port, and an egress rule to a
/// /24 on a UDP port range.
fn policy(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("p-{i:04}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": APPS[i % 3]}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"ipBlock": {"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{i}")}}}
                ],
                "ports": [{"port": 10000 + i}, {"port": "metrics"}]
            }],
            "egress": [{
                "to": [{"ipBlock": {"cidr": format!("10.200.{}.0/24", i % 256)}}],
                "ports": [{"protocol": "UDP", "port": 20000 + i, "endPort": 20010 + i}]
            }]
        }
    })
}

/// The policy that lets the client reach the server, last in name order.
fn allow_iperf() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "zz-allow-iperf"},
        "spec": {
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["iperf-server", "iperf-client"]}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "iperf-client"}}}], "ports": [{"port": 5201}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "iperf-server"}}}], "ports": [{"port": 5201}]}]
        }
    })
}

/// The policy that is changed: it selects the pods of every node.
fn change(k: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "change"},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.250.{k}.0/24")}}]}]
        }
    })
}

/// `iperf3 -c target` from inside a pod's namespace; received bits per second.
fn iperf(pod_ns: &str, target: &str) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", pod_ns, "iperf3", "-c", target, "-J", "-t"])
        .arg(IPERF_SECONDS.to_string())
        .output()
        .expect("run iperf3 (Debian package iperf3)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 -c {target}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 -c {target}: {report}"))
}

fn median_iperf(client_ns: &str, server: &str) -> f64 {
    let mut runs: Vec<f64> = (0..IPERF_ROUNDS)
        .map(|_| iperf(client_ns, server))
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        std::path::Path::new("/usr/bin/iperf3").exists(),
        "iperf3 is missing (Debian package iperf3)"
    );
    let file = std::env::temp_dir().join("kemu-npbench.yaml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    let _ = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["down", LAB, "-q"])
        .output();
    kemu(&["up", file.to_str().unwrap(), "-q", "--no-kubeconfig"]);
    let lab = lab_api(LAB);
    for (app, host) in APPS.iter().zip(HOSTS) {
        let mut container = serde_json::json!({"name": "main", "image": "registry.k8s.io/pause:3.10",
            "ports": [{"name": "metrics", "containerPort": 9100}]});
        if *app == "iperf-server" {
            // Not a built-in image: the pod runs the host's iperf3.
            container["image"] = "iperf3".into();
            container["command"] = serde_json::json!(["iperf3", "-s"]);
        }
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": app, "labels": {"app": app}},
            "spec": {"nodeName": host, "containers": [container], "terminationGracePeriodSeconds": 1}});
        json(lab, "POST", "/api/v1/namespaces/default/pods", &pod, 201);
    }
    let pods = running_pods(lab);
    let (server_ip, client_ns) = (pods[1].0.clone(), pods[2].1.clone());
    let addr: SocketAddr = format!("{server_ip}:5201").parse().unwrap();
    let node = NetNs::open(&format!("kemu-{LAB}-{}", HOSTS[2])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "iperf3 -s does not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let without = median_iperf(&client_ns, &server_ip);

    let files = status_files();
    let created = Instant::now();
    let mut last = 0;
    for i in 0..POLICIES {
        last = resource_version(&json(lab, "POST", POLICY_PATH, &policy(i), 201));
    }
    last = last.max(resource_version(&json(
        lab,
        "POST",
        POLICY_PATH,
        &allow_iperf(),
        201,
    )));
    let loaded = wait_applied(&files, last, Duration::from_secs(120));
    let create_secs = created.elapsed().as_secs_f64();
    let table = node
        .run(|| {
            let out = Command::new("nft")
                .args(["list", "table", "inet", kemu::netpol::nft::TABLE])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).lines().count())
        })
        .unwrap();

    // The same two pods selected by their 334 policies each, or (relabelled) by none while
    // the 1,001 policies stay: alternately, so that the machine's drifting load hits both.
    let select = |on: bool| {
        for app in &APPS[1..] {
            let label = if on {
                app.to_string()
            } else {
                format!("{app}-off")
            };
            let patch = serde_json::json!({"metadata": {"labels": {"app": label}}});
            json(
                lab,
                "PATCH",
                &format!("/api/v1/namespaces/default/pods/{app}"),
                &patch,
                200,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files[1..]
            .iter()
            .all(|f| NetpolStatus::read(f).is_some_and(|s| s.isolated_pods == usize::from(on)))
        {
            assert!(
                Instant::now() < deadline,
                "the pods' isolation did not follow"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (mut selected, mut unselected) = (Vec::new(), Vec::new());
    for _ in 0..IPERF_ROUNDS {
        select(false);
        unselected.push(iperf(&client_ns, &server_ip));
        select(true);
        selected.push(iperf(&client_ns, &server_ip));
    }
    selected.sort_by(f64::total_cmp);
    unselected.sort_by(f64::total_cmp);
    let with = selected[IPERF_ROUNDS / 2];
    let not_selected = unselected[IPERF_ROUNDS / 2];

    // Policy change to enforcement on every node.
    let mut samples = Vec::new();
    let mut syncs = Vec::new();
    for k in 0..CHANGES {
        std::thread::sleep(Duration::from_millis(200));
        let t0 = now_ms();
        let written = if k == 0 {
            json(lab, "POST", POLICY_PATH, &change(k), 201)
        } else {
            let patch = serde_json::json!({"spec": change(k)["spec"]});
            json(lab, "PATCH", &format!("{POLICY_PATH}/change"), &patch, 200)
        };
        let statuses = wait_applied(&files, resource_version(&written), Duration::from_secs(10));
        let done = statuses
            .iter()
            .map(|s| s.applied_at_ms as f64)
            .fold(f64::MIN, f64::max);
        samples.push((done - t0).max(0.0));
        syncs.extend(statuses.iter().map(|s| (s.last_sync_ms, s.last_apply_ms)));
    }

    // All policies deleted, the first figure again (the machine's load drifts).
    for name in (0..POLICIES)
        .map(|i| format!("p-{i:04}"))
        .chain(["zz-allow-iperf".to_string(), "change".to_string()])
    {
        let (code, text) = api(lab, "DELETE", &format!("{POLICY_PATH}/{name}"), None);
        assert_eq!(code, 200, "DELETE {name}: {text}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files
        .iter()
        .all(|f| NetpolStatus::read(f).is_some_and(|s| s.isolated_pods == 0 && s.policies == 0))
    {
        assert!(Instant::now() < deadline, "the policies never went");
        std::thread::sleep(Duration::from_millis(50));
    }
    let without_after = median_iperf(&client_ns, &server_ip);
    kemu(&["down", LAB, "-q"]);

    samples.sort_by(f64::total_cmp);
    let mut sync_ms: Vec<f64> = syncs.iter().map(|s| s.0).collect();
    sync_ms.sort_by(f64::total_cmp);
    let mut apply_ms: Vec<f64> = syncs.iter().map(|s| s.1).collect();
    apply_ms.sort_by(f64::total_cmp);
    let gbit = |bps: f64| bps / 1e9;
    let ratio = with / not_selected;
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let isolated: usize = loaded.iter().map(|s| s.isolated_pods).sum();
    let p90 = percentile(&samples, 0.9);
    let mut section = String::from("<!-- netpol:begin -->\n## NetworkPolicy enforcement\n\n");
    section.push_str(&format!(
        "Reproduce with `sudo cargo bench --bench netpol`. A lab of three nodes (iptables proxy mode), one pod on each; {POLICIES} NetworkPolicies over them (each isolates one pod both ways with an ipBlock peer, a namespace-selector peer, a numbered and a named port, and an egress /24 on a UDP port range; {isolated} pods isolated), plus one that lets the iperf3 client reach the server, last in name order. Creating the {} policies through the API until every node enforced them took {create_secs:.1} s; a node's table then has {table} lines (`nft list table`). Load average at the end: {}.\n\n",
        POLICIES + 1,
        load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    section.push_str(&format!(
        "**Policy change to enforcement on every node**, {CHANGES} writes of a policy that selects the pods of all three nodes (a create, then merge patches): from just before the API request until the last node's agent has applied its table (its status file records when `nft -f` returned).\n\n| p50 | p90 | max | agent sync (model + render + `nft -f`) p50 / max | of which `nft -f` p50 / max |\n|---:|---:|---:|---:|---:|\n| {:.1} ms | {p90:.1} ms | {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms |\n\n",
        percentile(&samples, 0.5),
        samples.last().unwrap(),
        percentile(&sync_ms, 0.5),
        sync_ms.last().unwrap(),
        percentile(&apply_ms, 0.5),
        apply_ms.last().unwrap(),
    ));
    section.push_str(&format!(
        "**iperf3 between allowed pods** (client on {}, server on {}, across the vxlan overlay; `iperf3 -c -t {IPERF_SECONDS}`, medians of {IPERF_ROUNDS}): before any policy; then, alternately, the two pods selected by their {} policies each (isolated, allowed by the last) and relabelled so that none selects them (the policies staying); then after deleting every policy. The ratio is selected against not selected:\n\n| no policies | not selected ({} policies present) | selected | no policies, after | ratio |\n|---:|---:|---:|---:|---:|\n| {:.2} Gbit/s | {:.2} Gbit/s | {:.2} Gbit/s | {:.2} Gbit/s | {:.0}% |\n\n",
        HOSTS[2],
        HOSTS[1],
        POLICIES / 3 + 1,
        POLICIES + 1,
        gbit(without),
        gbit(not_selected),
        gbit(with),
        gbit(without_after),
        ratio * 100.0
    ));
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    section.push_str(&format!(
        "Targets:\n- a policy change enforced on every node <= 100 ms with 1,000 policies: {} (p90 {p90:.1} ms);\n- iperf3 between allowed pods within 5% of the no-policy figure: {} ({:.0}%).\n<!-- netpol:end -->\n",
        verdict(p90 <= 100.0),
        verdict(ratio >= 0.95),
        ratio * 100.0
    ));
    print!("{section}");
    write_section("netpol", &section);
}
