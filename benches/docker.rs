//! Pod start with the Docker runtime (target: p50 at most 1 s): a seed lab with
//! `runtime: docker`, the test image already in the engine; pods created one after another
//! through the API, each timed from its create request until the API shows it Running and
//! its port 80 answers a TCP connect from another node. Run as root with dockerd running:
//! `sudo cargo bench --bench docker`.

mod common;

#[path = "../tests/docker_support/mod.rs"]
mod docker_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabApi, api, lab_api, write_section};

const LAB: &str = "dockerbench";
const HOSTS: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
const IMAGE: &str = "kemu-bench/web:1";
/// Pods started one after another.
const PODS: usize = 20;

fn kemu(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kemu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each pod's time from its create request until Running and reachable from another node.
fn pod_starts(lab: LabApi) -> Vec<Duration> {
    use kemu::netns::NetNs;
    use std::net::{SocketAddr, TcpStream};
    let namespaces: Vec<NetNs> = HOSTS
        .iter()
        .map(|h| NetNs::open(&format!("kemu-{LAB}-{h}")).unwrap())
        .collect();
    let mut times = Vec::new();
    for i in 0..PODS {
        let name = format!("d{i}");
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": IMAGE, "ports": [{"containerPort": 80}]}],
                     "terminationGracePeriodSeconds": 0}})
        .to_string();
        let t = Instant::now();
        let (code, body) = api(lab, "POST", "/api/v1/namespaces/default/pods", Some(&pod));
        assert_eq!(code, 201, "{body}");
        let deadline = t + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "pod {name} did not come up");
            let (_, body) = api(
                lab,
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
            );
            let item: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let (Some("Running"), Some(ip), Some(node)) = (
                item["status"]["phase"].as_str(),
                item["status"]["podIP"].as_str(),
                item["spec"]["nodeName"].as_str(),
            ) {
                let from = HOSTS.iter().position(|h| *h != node).unwrap();
                let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
                let reached = namespaces[from]
                    .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                    .is_ok();
                if reached {
                    times.push(t.elapsed());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        api(
            lab,
            "DELETE",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            Some(r#"{"gracePeriodSeconds":0}"#),
        );
        let gone = Instant::now() + Duration::from_secs(60);
        while api(
            lab,
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .0 != 404
        {
            assert!(Instant::now() < gone, "pod {name} was not deleted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    times
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    docker_support::import_image(IMAGE);
    let work = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string("topologies/seed.yaml").unwrap();
    let topology = work.path().join("seed-docker.yaml");
    std::fs::write(&topology, format!("{seed}runtime: docker\n")).unwrap();
    let _ = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["down", LAB])
        .output();
    kemu(&[
        "up",
        topology.to_str().unwrap(),
        "--name",
        LAB,
        "--no-kubeconfig",
        "-q",
    ]);
    let mut times = pod_starts(lab_api(LAB));
    kemu(&["down", LAB]);
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let s = format!(
        "<!-- docker:begin -->\n## Pods on the Docker runtime\n\n\
         Reproduce with `sudo cargo bench --bench docker` (dockerd running, e.g. from \
         `sudo ./ci/bootstrap.sh deps`). A seed lab with `runtime: docker`; the image \
         (busybox's httpd on port 80, tests/docker_support) already in the engine; {PODS} pods created one \
         after another through the API (the scheduler places them); each one's time from its create request \
         until the API shows it Running and its port 80 answers a TCP connect from another node, through the \
         overlay. A pod start here is two containers in the engine (the sandbox, then the pod's container), \
         with the kubelet wiring the sandbox's network namespace in between.\n\n\
         | pods | p50 | max | target |\n|---|---:|---:|---:|\n\
         | {PODS}, one after another | {} | {} | ≤ 1 s |\n\n\
         Target: a pod Running and reachable from another node in at most 1 s at p50 ({}).\n<!-- docker:end -->\n",
        ms(p50),
        ms(max),
        if p50 <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    print!("{s}");
    write_section("docker", &s);
}
