//! End to end: the lab fabric on real namespaces. Every test builds its own lab under a unique
//! name (tests run in parallel) and tears it down, checking that nothing is left behind.

mod common;

use std::time::Duration;

use common::*;

const SEED: &str = "topologies/seed.yaml";
const HOSTS: [&str; 4] = ["192.168.0.201", "192.168.0.202", "192.168.0.203", "client"];
const IPS: [&str; 4] = [
    "192.168.0.201",
    "192.168.0.202",
    "192.168.0.203",
    "192.168.0.100",
];
const QUICK: Duration = Duration::from_secs(2);

#[test]
fn every_host_reaches_every_other_host_over_tcp() {
    let lab = Lab::up(SEED, "mesh", &["--network-only"]);
    let servers: Vec<_> = HOSTS
        .iter()
        .zip(IPS)
        .map(|(host, ip)| serve_in(&lab.ns(host), &format!("{ip}:7000"), "hello"))
        .collect();
    for from in HOSTS {
        for (to, addr) in HOSTS.iter().zip(&servers) {
            if from == *to {
                continue;
            }
            let reply = fetch_from(&lab.ns(from), *addr, QUICK)
                .unwrap_or_else(|e| panic!("{from} -> {to} ({addr}): {e}"));
            assert_eq!(reply, "hello");
        }
    }
}

#[test]
fn pod_subnets_are_reached_through_flannel_vxlan() {
    let lab = Lab::up(SEED, "vx", &["--network-only"]);
    // 192.168.0.201 leases 172.16.1.0/24; its cbr0 holds 172.16.1.1.
    let addr = serve_in(
        &lab.ns("192.168.0.201"),
        "172.16.1.1:7001",
        "pod subnet of .201",
    );
    let before_tx = counters(&lab.ns("192.168.0.202"), "flannel.1");
    let before_rx = counters(&lab.ns("192.168.0.201"), "flannel.1");
    let reply =
        fetch_from(&lab.ns("192.168.0.202"), addr, QUICK).expect("202 reaches 201's pod subnet");
    assert_eq!(reply, "pod subnet of .201");
    let after_tx = counters(&lab.ns("192.168.0.202"), "flannel.1");
    let after_rx = counters(&lab.ns("192.168.0.201"), "flannel.1");
    // The TCP exchange crossed the VXLAN devices of both hosts.
    assert!(
        after_tx.tx_packets >= before_tx.tx_packets + 3,
        "{before_tx:?} -> {after_tx:?}"
    );
    assert!(
        after_rx.rx_packets >= before_rx.rx_packets + 3,
        "{before_rx:?} -> {after_rx:?}"
    );
    // And the overlay state is flannel's: one route, neighbour and FDB entry per peer.
    let routes = lab.exec("192.168.0.202", &["ip", "route"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("172.16.1.0/24 via 172.16.1.0 dev flannel.1 proto static onlink"),
        "{routes}"
    );
    assert!(
        routes.contains("172.16.3.0/24 via 172.16.3.0 dev flannel.1 proto static onlink"),
        "{routes}"
    );
    let fdb = lab.exec(
        "192.168.0.202",
        &["bridge", "fdb", "show", "dev", "flannel.1"],
    );
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains("dst 192.168.0.201 self permanent")
            && fdb.contains("dst 192.168.0.203 self permanent"),
        "{fdb}"
    );
    let env = std::fs::read_to_string(format!(
        "/run/kemu/{}/hosts/192.168.0.202/subnet.env",
        lab.name
    ))
    .unwrap();
    assert_eq!(
        env,
        "FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
}

#[test]
fn the_outside_client_reaches_hosts_but_not_pod_subnets() {
    let lab = Lab::up(SEED, "cl", &["--network-only"]);
    let host = serve_in(&lab.ns("192.168.0.201"), "192.168.0.201:7002", "host");
    let pods = serve_in(&lab.ns("192.168.0.201"), "172.16.1.1:7003", "pods");
    assert_eq!(fetch_from(&lab.ns("client"), host, QUICK).unwrap(), "host");
    // The client's default route leads to the LAN's router, which knows no pod subnet.
    let err = fetch_from(&lab.ns("client"), pods, QUICK)
        .expect_err("pod subnets are not routable from outside");
    eprintln!("client -> {pods}: {err}");
}

#[test]
fn host_gw_backend_works_on_one_segment() {
    let lab = Lab::up(
        "tests/fixtures/topologies/ok/hostgw-one-segment.yaml",
        "hg",
        &["--network-only"],
    );
    assert!(
        lab.warnings_of_up().is_empty(),
        "no warnings expected: {}",
        lab.stderr_of_up()
    );
    let addr = serve_in(&lab.ns("192.168.0.203"), "172.16.3.1:7004", "via host-gw");
    assert_eq!(
        fetch_from(&lab.ns("192.168.0.201"), addr, QUICK).unwrap(),
        "via host-gw"
    );
    let routes = lab.exec("192.168.0.201", &["ip", "route"]);
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("172.16.3.0/24 via 192.168.0.203 dev eth0"),
        "{routes}"
    );
    let links = lab.exec("192.168.0.201", &["ip", "-o", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("flannel.1"),
        "host-gw has no VXLAN device"
    );
}

/// flannel's host-gw backend installs `<remote subnet> via <remote host IP>`. The kernel only
/// accepts a gateway that is directly reachable, so across a router the route is refused
/// (flannel logs "network is unreachable" and keeps going) and pods on the other segment are
/// unreachable, while hosts on the same segment still work. kemu reproduces exactly that:
/// `up` warns, same-segment pod subnets work, cross-segment ones do not.
#[test]
fn host_gw_backend_fails_across_a_router_like_real_flannel() {
    let lab = Lab::up(
        "tests/fixtures/topologies/ok/hostgw-two-segments.yaml",
        "hg2",
        &["--network-only"],
    );
    let warnings = lab.warnings_of_up();
    assert!(
        warnings.contains("cannot route to 10.244.3.0/24 (node-b) via 10.2.0.10"),
        "{warnings}"
    );
    assert!(
        warnings.contains("host-gw backend needs every host on one L2 segment"),
        "{warnings}"
    );
    let same = serve_in(&lab.ns("node-a"), "10.244.2.1:7005", "same segment");
    let other = serve_in(&lab.ns("node-b"), "10.244.3.1:7006", "other segment");
    assert_eq!(
        fetch_from(&lab.ns("master"), same, QUICK).unwrap(),
        "same segment"
    );
    assert!(
        fetch_from(&lab.ns("master"), other, QUICK).is_err(),
        "host-gw cannot cross the router"
    );
    // The underlay itself is routed: hosts on both segments reach each other.
    let host_b = serve_in(&lab.ns("node-b"), "10.2.0.10:7007", "underlay");
    assert_eq!(
        fetch_from(&lab.ns("master"), host_b, QUICK).unwrap(),
        "underlay"
    );
}

#[test]
fn vxlan_backend_works_across_a_router() {
    let lab = Lab::up("topologies/two-segments.yaml", "vx2", &["--network-only"]);
    assert!(lab.warnings_of_up().is_empty(), "{}", lab.stderr_of_up());
    let addr = serve_in(&lab.ns("node-c"), "10.244.4.1:7008", "vxlan across racks");
    assert_eq!(
        fetch_from(&lab.ns("master"), addr, QUICK).unwrap(),
        "vxlan across racks"
    );
}

#[test]
fn exec_runs_on_the_host_with_its_name_interfaces_and_exit_code() {
    let lab = Lab::up(SEED, "ex", &["--network-only"]);
    let out = lab.exec("192.168.0.202", &["hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.168.0.202");
    let out = lab.exec("client", &["ls", "/sys/class/net"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["eth0", "lo"]
    );
    let out = lab.exec("client", &["getent", "hosts", "client"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("192.168.0.100"));
    let out = lab.exec("192.168.0.203", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = lab.exec("no-such-host", &["true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no host \"no-such-host\""));
}

#[test]
fn root_namespace_is_unchanged_after_up_and_down() {
    let before = RootState::capture();
    {
        let lab = Lab::up(SEED, "root", &["--network-only"]);
        let addr = serve_in(&lab.ns("192.168.0.203"), "172.16.3.1:7009", "x");
        fetch_from(&lab.ns("192.168.0.201"), addr, QUICK).unwrap();
        assert_eq!(
            RootState::capture(),
            before,
            "the root namespace changed while the lab was up"
        );
    }
    assert_eq!(
        RootState::capture(),
        before,
        "the root namespace changed after down"
    );
}

#[test]
fn up_of_an_existing_lab_fails_clearly_and_down_twice_succeeds() {
    let lab = Lab::up(SEED, "twice", &["--network-only"]);
    let out = kemu()
        .args(["up", SEED, "--name", &lab.name])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("lab {} already exists", lab.name)),
        "{err}"
    );
    let first = run_kemu(&["down", &lab.name]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("6 namespaces removed"));
    let second = run_kemu(&["down", &lab.name]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("is not up"));
    assert_lab_gone(&lab.name);
}

#[test]
fn sigkill_of_up_at_any_point_then_down_leaves_nothing() {
    let topology = kemu::topology::generate::generate(&kemu::topology::generate::GenerateOptions {
        name: "killme".into(),
        hosts: 120,
        segments: 2,
        clients: true,
        proxy_mode: "iptables".into(),
    });
    let (_dir, file) = temp_file("killme.yaml", &topology);
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80, 160] {
        let name = unique_name("kill");
        let mut child = kemu()
            .args([
                "up",
                file.to_str().unwrap(),
                "--name",
                &name,
                "--network-only",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let out = run_kemu(&["down", &name]);
        eprintln!(
            "killed after {delay_ms}ms: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        assert_lab_gone(&name);
    }
}

#[test]
fn the_supervisor_restarts_daemons_and_down_stops_them() {
    let lab = Lab::up("tests/fixtures/topologies/ok/daemons.yaml", "sup", &[]);
    let status_json = || -> serde_json::Value {
        serde_json::from_slice(&run_kemu(&["status", &lab.name, "-o", "json"]).stdout).unwrap()
    };
    let sleeper = |v: &serde_json::Value| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "sleeper")
            .cloned()
            .unwrap()
    };
    let first = sleeper(&status_json());
    assert_eq!(first["state"], "running");
    let pid = first["pid"].as_i64().unwrap() as i32;
    // It runs inside the client's namespace.
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let want = std::fs::metadata(format!("/run/netns/{}", lab.ns("outside"))).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ns.to_string_lossy(), format!("net:[{}]", want.ino()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        let now = sleeper(&status_json());
        if now["state"] == "running" && now["pid"].as_i64() != Some(pid as i64) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "not restarted: {now}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(restarted["restarts"], 1);
    assert_eq!(restarted["lastExit"], "killed by signal 9");
    let new_pid = restarted["pid"].as_i64().unwrap() as i32;
    drop(lab); // down: stops the supervisor, which stops the daemon
    assert!(
        kemu::lab::state::process_is_dead(new_pid),
        "daemon {new_pid} survived down"
    );
}
