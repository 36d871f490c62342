//! End to end: an API server in a crash loop must not empty the cluster (issue 12, part 4).
//!
//! The API server of a seed lab is killed every 0.3 s while the supervisor keeps restarting it.
//! Heartbeats cannot land meanwhile, but the controller-manager cannot see anything either: it
//! must not conclude that every node is dead. Nothing is evicted, neither the
//! ReplicationController nor the Deployment ever has more pods than it asks for (plus surge), and
//! the NodePort keeps answering (the data plane does not need the API server).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kemu::lab::state::ProcessRecord;
use serde_json::Value;

const SEED: &str = "topologies/seed.yaml";
const LONG: Duration = Duration::from_secs(90);
const MASTER: &str = "192.168.0.201";
const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
/// The seed's `nodeMonitorGracePeriod` and `podEvictionTimeout`.
const GRACE: Duration = Duration::from_secs(8);
const EVICTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API server is crash-looped. The supervisor's back-off reaches its 10 s cap
/// after about 15 s of killing; 60 s then gives four or five outages longer than the grace
/// period (7.5 grace periods in all), which is what emptied the cluster, and keeps the test
/// under two minutes. The 100 s only repeats the same cycle more often.
const CRASH_LOOP: Duration = Duration::from_secs(60);

/// kubectl with a short request timeout (the API server may be down); `None` if it fails.
fn try_get(lab: &Lab, args: &[&str]) -> Option<Value> {
    let mut argv = vec!["--request-timeout=2s", "get"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let out = lab.kubectl(&argv);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ready(obj: &Value) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(String::from)
}

/// The two controllers under watch: the article's ReplicationController (2 replicas) and a
/// Deployment of 2 replicas (its default maxSurge of 25 % rounds up to one more pod), by the
/// label of their pods.
const OWNERS: [(&str, usize); 2] = [("name=nginx", 2), ("app=web", 3)];

/// What the sampler saw of the cluster while the API server answered.
#[derive(Default, Debug)]
struct Seen {
    samples: usize,
    /// Every pod uid ever listed, by owner label.
    pod_uids: BTreeMap<&'static str, BTreeSet<String>>,
    /// The most pods an owner had at once (terminating ones included).
    max_pods: BTreeMap<&'static str, usize>,
    /// `node: Ready=<status>` and `node: <taint>` seen for a node that was not plainly Ready.
    unhealthy: BTreeSet<String>,
    /// When that was first seen, from the start of the crash loop (for the failure message).
    first_unhealthy: Option<Duration>,
}

fn sample(lab: &Lab, seen: &Mutex<Seen>, start: Instant) {
    let Some(pods) = try_get(lab, &["pods"]) else {
        return;
    };
    let Some(nodes) = try_get(lab, &["nodes"]) else {
        return;
    };
    let pods = items(&pods);
    let mut seen = seen.lock().unwrap();
    seen.samples += 1;
    for (label, _) in OWNERS {
        let (k, v) = label.split_once('=').unwrap();
        let ours: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["labels"][k] == v)
            .collect();
        let max = seen.max_pods.entry(label).or_default();
        *max = (*max).max(ours.len());
        seen.pod_uids
            .entry(label)
            .or_default()
            .extend(ours.iter().map(|p| uid(p)));
    }
    for node in items(&nodes) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let status = ready(&node).unwrap_or_default();
        if status != "True" {
            seen.unhealthy.insert(format!("{name}: Ready={status}"));
        }
        for t in node["spec"]["taints"].as_array().into_iter().flatten() {
            seen.unhealthy
                .insert(format!("{name}: {}:{}", t["key"], t["effect"]));
        }
    }
    if seen.first_unhealthy.is_none() && !seen.unhealthy.is_empty() {
        seen.first_unhealthy = Some(start.elapsed());
    }
}

/// The uids of the ready pods with `label`, once there are exactly `n` and all are ready.
fn ready_pods(lab: &Lab, label: &str, n: usize) -> Option<BTreeSet<String>> {
    let pods = items(&try_get(lab, &["pods", "-l", label])?);
    (pods.len() == n && pods.iter().all(|p| ready(p).as_deref() == Some("True")))
        .then(|| pods.iter().map(uid).collect())
}

/// The registered API server process of the lab, if one runs.
fn apiserver(lab: &Lab) -> Option<ProcessRecord> {
    let dir = kemu::lab::state::LabDir::new(&lab.name.parse().unwrap()).unwrap();
    ProcessRecord::all(&dir)
        .into_iter()
        .find(|r| r.what == format!("{MASTER}/apiserver") && r.is_alive())
}

/// Fetch the welcome page; on failure, why (curl's exit code and message, or the body).
fn curl(lab: &Lab, url: &str) -> Result<(), String> {
    let out = lab.exec("client", &["curl", "-sS", "-m", "2", url]);
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Welcome to nginx!") {
        return Ok(());
    }
    Err(format!(
        "{url}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Events of `reason` in the default namespace.
fn events(lab: &Lab, reason: &str) -> Vec<String> {
    let list = try_get(
        lab,
        &["events", "--field-selector", &format!("reason={reason}")],
    )
    .expect("events");
    items(&list)
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e["involvedObject"]["kind"].as_str().unwrap_or_default(),
                e["involvedObject"]["name"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn an_api_server_crash_loop_evicts_nothing_and_the_node_port_keeps_answering() {
    let lab = Lab::up(SEED, "crash", &[]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-rc.yaml"]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-service-nodeport.yaml"]);
    lab.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    let before: BTreeMap<&str, BTreeSet<String>> = OWNERS
        .iter()
        .map(|(label, _)| {
            let uids = wait_for(&format!("two ready {label} pods"), LONG, || {
                ready_pods(&lab, label, 2)
            });
            (*label, uids)
        })
        .collect();
    let node_port = lab.jsonpath(
        "service/nginx-service-nodeport",
        "{.spec.ports[0].nodePort}",
    );
    let urls: Vec<String> = NODES
        .iter()
        .map(|n| format!("http://{n}:{node_port}/"))
        .collect();
    for url in &urls {
        wait_for(&format!("{url} answers"), LONG, || curl(&lab, url).ok());
    }

    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let (tries, failures) = (AtomicUsize::new(0), Mutex::new(Vec::new()));
    let seen = Mutex::new(Seen::default());
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = apiserver(&lab) {
                    let pid = nix::unistd::Pid::from_raw(r.pid);
                    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        s.spawn(|| {
            for url in urls.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tries.fetch_add(1, Ordering::Relaxed);
                if let Err(why) = curl(&lab, url) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{:.1}s {why}", start.elapsed().as_secs_f64()));
                }
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sample(&lab, &seen, start);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(CRASH_LOOP);
        stop.store(true, Ordering::Relaxed);
    });
    let kills = kills.into_inner();
    let tries = tries.into_inner();
    assert!(kills >= 5, "the API server was killed only {kills} times");

    // The API server comes back (after at most the back-off cap). A controller that misread
    // the outage marks nodes Unknown within a grace period (kemu's did so within 5 s) and
    // evicts an eviction timeout later: watch for two grace periods and one eviction timeout.
    wait_for("the API server back", LONG, || {
        try_get(&lab, &["nodes"]).map(|_| ())
    });
    let back = Instant::now();
    while back.elapsed() < 2 * GRACE + EVICTION_TIMEOUT {
        sample(&lab, &seen, start);
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = seen.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    let evictions = events(&lab, "TaintManagerEviction");
    let not_ready = events(&lab, "NodeNotReady");
    let created = events(&lab, "SuccessfulCreate");
    eprintln!(
        "{kills} kills; API server back {:?} after the loop began; {} of {tries} NodePort \
         requests failed; seen: {seen:#?}\n\
         evictions: {evictions:#?}\nNodeNotReady: {not_ready:#?}\ncreated: {created:#?}",
        back.duration_since(start),
        failures.len()
    );
    assert!(seen.samples > 0, "never saw the cluster");
    assert!(
        failures.is_empty(),
        "{} of {tries} NodePort requests failed while the API server crash-looped: {failures:?}",
        failures.len()
    );
    assert!(tries >= 20, "only {tries} NodePort requests");
    assert_eq!(
        seen.unhealthy,
        BTreeSet::new(),
        "nodes seen not Ready or tainted"
    );
    assert_eq!(evictions, Vec::<String>::new());
    assert_eq!(not_ready, Vec::<String>::new());
    for (label, most) in OWNERS {
        assert!(
            seen.max_pods[label] <= most,
            "{label}: {} pods at once",
            seen.max_pods[label]
        );
        assert_eq!(
            seen.pod_uids[label], before[label],
            "{label}: pods replaced"
        );
        let now = wait_for(&format!("{label} pods ready"), LONG, || {
            ready_pods(&lab, label, 2)
        });
        assert_eq!(now, before[label], "{label}: the replicas changed");
    }
    // Two pods each for the ReplicationController and the Deployment's ReplicaSet, ever.
    assert_eq!(created.len(), 4, "{created:#?}");
}
