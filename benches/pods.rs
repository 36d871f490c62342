//! Benchmark of the node agents (issue 4): from a pod's create request to the pod Running and
//! reachable from another node, for 1, 10 and 100 pods; RSS of every agent and per pod.
//! Needs root (it builds a lab). Writes its section of BENCHMARKS.md.
//!
//!     sudo ./ci/bootstrap.sh build && sudo cargo bench --bench pods

mod common;

use common::{LabApi, api, write_section};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use kemu::netns::NetNs;
use kemu::runtime::process::userns::{self, Handshake, IdRange};

const LAB: &str = "podbench";
const HOSTS: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
/// A minion that is not the master: its kubelet and flanneld are the ones the target is about.
const MEASURED_HOST: &str = "192.168.0.202";
/// Long enough for the kubelet's periodic return of freed memory (kubelet TRIM_EVERY, 5 s).
const SETTLE: Duration = Duration::from_secs(6);
/// Single pods started one after another: one pod's start time, the noise of a single sample
/// averaged out (what the cost of confining pods is compared with).
const SINGLES: usize = 30;
/// Children made with and without a user namespace, each.
const CONFINEMENTS: usize = 300;

/// kemu as `ci/bootstrap.sh build` installs it: bin/kemu beside the node agents' binaries,
/// which are built for size (the node-agents profile); cargo bench builds only the release ones.
fn kemu_binary() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bin/kemu");
    assert!(
        bin.exists(),
        "{} is missing: run `sudo ./ci/bootstrap.sh build` first",
        bin.display()
    );
    bin
}

fn kemu(args: &[&str]) -> std::process::Output {
    Command::new(kemu_binary())
        .args(args)
        .output()
        .expect("run kemu")
}

fn pod_json(name: &str) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}],
                 "terminationGracePeriodSeconds": 1}})
    .to_string()
}

/// Create `n` pods at once and time each one until it is Running and answers on port 80 from
/// a host that is not its own.
fn round(lab: LabApi, n: usize) -> Vec<Duration> {
    let started: Vec<(String, Instant)> = (0..n)
        .map(|i| {
            let name = format!("b{n}-{i}");
            let t = Instant::now();
            let (code, body) = api(
                lab,
                "POST",
                "/api/v1/namespaces/default/pods",
                Some(&pod_json(&name)),
            );
            assert_eq!(code, 201, "{body}");
            (name, t)
        })
        .collect();
    let mut done: Vec<Option<Duration>> = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs(120);
    let namespaces: Vec<NetNs> = HOSTS
        .iter()
        .map(|h| NetNs::open(&format!("kemu-{LAB}-{h}")).unwrap())
        .collect();
    while done.iter().any(|d| d.is_none()) {
        assert!(
            Instant::now() < deadline,
            "pods did not come up in 2 minutes"
        );
        let (_, body) = api(lab, "GET", "/api/v1/namespaces/default/pods", None);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in list["items"].as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap();
            let Some(i) = started.iter().position(|(n, _)| n == name) else {
                continue;
            };
            if done[i].is_some() || item["status"]["phase"] != "Running" {
                continue;
            }
            let (Some(ip), Some(node)) = (
                item["status"]["podIP"].as_str(),
                item["spec"]["nodeName"].as_str(),
            ) else {
                continue;
            };
            let from = HOSTS.iter().position(|h| *h != node).unwrap();
            let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
            let reached = namespaces[from]
                .run(move || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map(|_| ())
                })
                .is_ok();
            if reached {
                done[i] = Some(started[i].1.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (name, _) in &started {
        api(
            lab,
            "DELETE",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            Some(r#"{"gracePeriodSeconds":0}"#),
        );
    }
    done.into_iter().map(|d| d.unwrap()).collect()
}

/// What confining a container adds to its start: a child made the way the runtime makes a
/// container's PID 1 (a mount namespace of its own), then, when `ids` is given, stage 2 of
/// `runtime::process::userns` exactly as the shim and PID 1 run it (the user namespace, its id
/// maps written by the parent, root inside it, the locking copy of the mount namespace). Timed
/// from the fork until the child has exited.
fn child_start(ids: Option<IdRange>) -> Duration {
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    let handshake = Handshake::new().unwrap();
    let started = Instant::now();
    // SAFETY: the child only makes system calls and exits; it never returns into the bench.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let ok = unshare(CloneFlags::CLONE_NEWNS).is_ok()
                && (ids.is_none() || userns::enter(handshake.init).is_ok());
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            drop(handshake.init);
            if let Some(ids) = ids {
                userns::map(handshake.shim, child, &ids).unwrap();
            }
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            started.elapsed()
        }
    }
}

/// Wait until the API holds no benchmark pod and no host has a pod sandbox left.
fn wait_all_gone(lab: LabApi) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api(lab, "GET", "/api/v1/namespaces/default/pods", None);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let pods = list["items"].as_array().map_or(0, |i| i.len());
        let sandboxes = walk(std::path::Path::new(&format!("/run/kemu/{LAB}/hosts")))
            .iter()
            .filter(|p| p.file_name().is_some_and(|f| f == "container.json"))
            .count();
        if pods == 0 && sandboxes == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pods still there after 60 s: {pods} in the API, {sandboxes} containers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// (RSS, PSS) in KiB of a process.
fn memory(pid: i64) -> (u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

fn main() {
    let _ = kemu(&["down", LAB]);
    let up = kemu(&[
        "up",
        "topologies/seed.yaml",
        "--name",
        LAB,
        "--no-kubeconfig",
        "--seed",
        "1",
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lab = common::lab_api(LAB);
    let agents: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/kemu/{LAB}/agents.json")).unwrap(),
    )
    .unwrap();
    let agents: Vec<(String, String, i64)> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["host"].as_str().unwrap().to_string(),
                a["name"].as_str().unwrap().to_string(),
                a["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let node_agents = |host: &str| -> (u64, u64) {
        agents
            .iter()
            .filter(|(h, name, _)| h == host && (name == "kubelet" || name == "flanneld"))
            .map(|(_, _, pid)| memory(*pid))
            .fold((0, 0), |(r, p), (rss, pss)| (r + rss, p + pss))
    };
    std::thread::sleep(SETTLE);
    let idle = node_agents(MEASURED_HOST);

    let mut rows = Vec::new();
    for n in [1usize, 10, 100] {
        let mut times = round(lab, n);
        rows.push((n, percentile(&mut times, 0.5), percentile(&mut times, 0.99)));
        wait_all_gone(lab);
    }
    let mut singles = Vec::new();
    for _ in 0..SINGLES {
        singles.extend(round(lab, 1));
        wait_all_gone(lab);
    }
    let single_p50 = percentile(&mut singles, 0.5);
    // Interleaved, so that the machine's load weighs on both alike.
    let ids = kemu::lab::idrange::slot(kemu::lab::idrange::SLOTS - 1);
    let (mut plain, mut confined) = (Vec::new(), Vec::new());
    for _ in 0..CONFINEMENTS {
        plain.push(child_start(None));
        confined.push(child_start(Some(ids)));
    }
    let plain_p50 = percentile(&mut plain, 0.5);
    let confined_p50 = percentile(&mut confined, 0.5);
    let confinement = confined_p50.saturating_sub(plain_p50);
    // Memory after these pods came and went: what a busy kubelet keeps.
    std::thread::sleep(SETTLE);
    let after_churn = node_agents(MEASURED_HOST);
    let agent_rows: Vec<(String, String, u64, u64)> = agents
        .iter()
        .map(|(host, name, pid)| {
            let (rss, pss) = memory(*pid);
            (host.clone(), name.clone(), rss, pss)
        })
        .collect();

    // 10 idle nginx pods: their processes, and the agents while they run.
    let names: Vec<String> = (0..10).map(|i| format!("mem-{i}")).collect();
    for n in &names {
        api(
            lab,
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(&pod_json(n)),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let with_pods = node_agents(MEASURED_HOST);
    let mut pod_rss = Vec::new();
    let mut pod_pss = Vec::new();
    let root = format!("/run/kemu/{LAB}/hosts");
    for entry in walk(std::path::Path::new(&root)) {
        if entry.file_name().is_some_and(|f| f == "container.json") {
            let dir = entry.parent().unwrap();
            let read = |f: &str| -> i64 {
                std::fs::read_to_string(dir.join(f))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["pid"].as_i64())
                    .unwrap_or(0)
            };
            let (c_rss, c_pss) = memory(read("container.json"));
            let (s_rss, s_pss) = memory(read("shim.json"));
            pod_rss.push(c_rss + s_rss);
            pod_pss.push(c_pss + s_pss);
        }
    }
    let _ = kemu(&["down", LAB]);

    let mut s = String::from("<!-- pods:begin -->\n## Pods: create to Running and reachable\n\n");
    s.push_str(
        "Reproduce with `sudo ./ci/bootstrap.sh build && sudo cargo bench --bench pods` (the lab runs bin/kemu, \
         with the kubelet and flanneld built for size). A seed lab (3 minions, vxlan, all agents); \
         `n` nginx pods are created at once through the API (no nodeName: the scheduler places them); each pod's time \
         runs from its create request until the API shows it Running and its port 80 answers a TCP connect from another \
         node, through the overlay.\n\n| pods | p50 | p99 |\n|---:|---:|---:|\n",
    );
    for (n, p50, p99) in &rows {
        s.push_str(&format!("| {n} | {} | {} |\n", ms(*p50), ms(*p99)));
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let share = confinement.as_secs_f64() / single_p50.as_secs_f64() * 100.0;
    s.push_str(&format!(
        "\nConfinement (each container in a user namespace of its own, issue 12): one pod at a time, {SINGLES} times, \
         starts in {:.1} ms (p50). A child made as the runtime makes a container's PID 1 starts in {:.0} µs without and \
         {:.0} µs with the user namespace stage (`runtime::process::userns`: unshare, id maps written by the shim, root \
         inside, the locking mount namespace copy; p50 of {CONFINEMENTS} each, interleaved): confinement adds {:.0} µs, \
         {share:.1}% of a pod's start (target under 10%: {}).\n",
        single_p50.as_secs_f64() * 1000.0,
        us(plain_p50),
        us(confined_p50),
        us(confinement),
        if share < 10.0 { "met" } else { "missed" },
    ));
    s.push_str("\nMemory of the agents of that lab once those pods came and went (RSS counts the kemu binary's shared code in every process; PSS splits \
                shared pages among the processes that share them):\n\n| host | agent | RSS | PSS |\n|---|---|---:|---:|\n");
    for (host, name, rss, pss) in &agent_rows {
        s.push_str(&format!(
            "| {host} | {name} | {:.1} MiB | {:.1} MiB |\n",
            *rss as f64 / 1024.0,
            *pss as f64 / 1024.0
        ));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
    s.push_str(&format!(
        "\nkubelet + flanneld on {MEASURED_HOST}, RSS / PSS: {:.1} / {:.1} MiB idle after `kemu up`; {:.1} / {:.1} MiB \
         after the pods above came and went; {:.1} / {:.1} MiB while its share of 10 idle nginx pods runs. \
         An idle nginx pod (its shim and container process): {:.1} MiB RSS, {:.1} MiB PSS on average over {} pods.\n\n",
        mib(idle.0),
        mib(idle.1),
        mib(after_churn.0),
        mib(after_churn.1),
        mib(with_pods.0),
        mib(with_pods.1),
        avg(&pod_rss),
        avg(&pod_pss),
        pod_rss.len(),
    ));
    // The target is 10 MB (decimal) for the worst of the three moments.
    let worst =
        |f: fn(&(u64, u64)) -> u64| [idle, after_churn, with_pods].iter().map(f).max().unwrap();
    let under_10_mb = |kib: u64| kib * 1024 < 10_000_000;
    s.push_str(&format!(
        "Targets: one pod Running and reachable in under 300 ms ({}); kubelet plus flanneld under 10 MB per host at \
         the worst of those moments ({:.2} MB RSS: {}; {:.2} MB PSS: {}).\n<!-- pods:end -->\n",
        if rows[0].1 < Duration::from_millis(300) { "met" } else { "missed" },
        worst(|m| m.0) as f64 * 1024.0 / 1e6,
        if under_10_mb(worst(|m| m.0)) { "met" } else { "missed" },
        worst(|m| m.1) as f64 * 1024.0 / 1e6,
        if under_10_mb(worst(|m| m.1)) { "met" } else { "missed" },
    ));
    print!("{s}");
    write_section("pods", &s);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
