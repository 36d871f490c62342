//! Benchmark of the cluster DNS (issue 15): a lab with 1,000 ClusterIP Services and the DNS
//! add-on (two CoreDNS pods of kemu's built-in image behind kube-dns); from a node, UDP queries
//! at a fixed offered rate, each for a random Service name (the answer is the Service's A
//! record), then for names outside the cluster (NXDOMAIN at once: the lab has no upstream).
//! Every query goes the way a pod's does: to the kube-dns ClusterIP, through the node's
//! iptables proxy rules, to one of the DNS pods. The latency is from the send of a query to
//! the receipt of its answer, matched by id.
//!
//! Needs root (it builds a lab). Writes its section of BENCHMARKS.md.
//!
//!     sudo cargo bench --bench dns

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{api, lab_api, write_section};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

const LAB: &str = "dnsbench";
const NODE: &str = "192.168.0.202";
const DNS: &str = "10.96.0.10:53";
const SERVICES: usize = 1000;
const RATE: u32 = 1000;
const SECONDS: u32 = 5;

const TOPOLOGY: &str = "name: dnsbench
segments: [{name: lan, cidr: 192.168.0.0/24}]
hosts:
  - {name: 192.168.0.201, ip: 192.168.0.201, roles: [master, minion]}
  - {name: 192.168.0.202, ip: 192.168.0.202, roles: [minion]}
  - {name: 192.168.0.203, ip: 192.168.0.203, roles: [minion]}
services: {clusterIPRange: 10.96.0.0/16}
clusterNetwork: {network: 172.16.0.0/16}
proxy: {mode: iptables}
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

struct Run {
    latencies: Vec<f64>,
    sent: usize,
    codes: HashMap<String, usize>,
}

/// Offer `RATE` queries a second for `SECONDS` seconds; `name(i)` names query i.
fn load(socket: &UdpSocket, mut name: impl FnMut(usize) -> String) -> Run {
    let socket = socket.try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sent_at: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let (socket, sent_at, done) = (socket.try_clone().unwrap(), sent_at.clone(), done.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut codes: HashMap<String, usize> = HashMap::new();
            let mut buf = [0u8; 4096];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let at = Instant::now();
                        let Ok(reply) = Message::from_vec(&buf[..n]) else {
                            continue;
                        };
                        if let Some(t) = sent_at.lock().unwrap().remove(&reply.metadata.id) {
                            latencies.push((at - t).as_secs_f64() * 1e3);
                            *codes
                                .entry(reply.metadata.response_code.to_string())
                                .or_default() += 1;
                        }
                    }
                    Err(_) if done.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            (latencies, codes)
        })
    };
    let total = (RATE * SECONDS) as usize;
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / RATE as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = i as u16;
        let packet = query(id, &name(i));
        sent_at.lock().unwrap().insert(id, Instant::now());
        socket.send(&packet).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut latencies, codes) = receiver.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    Run {
        latencies,
        sent: total,
        codes,
    }
}

fn row(what: &str, run: &Run) -> String {
    let l = &run.latencies;
    let mut codes: Vec<String> = run.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    codes.sort();
    format!(
        "| {what} | {} / {} | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
        l.len(),
        run.sent,
        percentile(l, 0.5),
        percentile(l, 0.99),
        l.last().copied().unwrap_or(f64::NAN),
        codes.join(", ")
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let file = std::env::temp_dir().join("kemu-dnsbench.yaml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    let _ = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["down", LAB, "-q"])
        .output();
    kemu(&["up", file.to_str().unwrap(), "-q", "--no-kubeconfig"]);
    let lab = lab_api(LAB);
    for i in 0..SERVICES {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"ports":[{{"name":"http","port":80}}],"selector":{{"app":"none"}}}}}}"#
        );
        let (code, text) = api(
            lab,
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&body),
        );
        assert_eq!(code, 201, "{text}");
    }
    // The endpoints controller makes a slice per Service; the zone settles once they exist.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = api(
            lab,
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["items"].as_array().is_some_and(|i| i.len() >= SERVICES) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the EndpointSlices never all came"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ns = kemu::netns::NetNs::open(&format!("kemu-{LAB}-{NODE}")).unwrap();
    let socket = ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(DNS)?;
            Ok(s)
        })
        .unwrap();
    // The DNS pods are up and their zone has the last Service.
    let last = format!("svc-{}.default.svc.cluster.local.", SERVICES - 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "the DNS never answered {last}");
        socket.send(&query(1, &last)).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf)
            && Message::from_vec(&buf[..n]).is_ok_and(|m| {
                m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty()
            })
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rng = 0x9e3779b97f4a7c15u64;
    let cluster = load(&socket, |_| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        format!("svc-{}.default.svc.cluster.local.", rng as usize % SERVICES)
    });
    let outside = load(&socket, |i| format!("host-{i}.example.org."));
    kemu(&["down", LAB, "-q"]);

    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut section = String::from("<!-- dns:begin -->\n## Cluster DNS\n\n");
    section.push_str(&format!(
        "Reproduce with `sudo cargo bench --bench dns` (release build). A lab of three nodes (iptables proxy mode) with {SERVICES} ClusterIP Services and the DNS add-on (two pods of kemu's built-in CoreDNS); from node {NODE}, {RATE} UDP queries a second for {SECONDS} s to the kube-dns ClusterIP, so through the node's proxy rules to either DNS pod, as a pod's queries go. Latency: a query's send to its answer's receipt. Load average at the end of the run: {}.\n\n",
        load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    section.push_str("| queries | answered / sent | p50 | p99 | max | answers |\n|---|---:|---:|---:|---:|---|\n");
    section.push_str(&row("a random Service's name (A)", &cluster));
    section.push_str(&row("a name outside the cluster (no upstream)", &outside));
    let p99 = |r: &Run| percentile(&r.latencies, 0.99);
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    section.push_str(&format!(
        "\nTargets:\n- p99 <= 1 ms at {RATE} queries/s for cluster names: {} (p99 {:.2} ms);\n- NXDOMAIN for outside names <= 1 ms: {} (p99 {:.2} ms).\n<!-- dns:end -->\n",
        verdict(p99(&cluster) <= 1.0 && cluster.latencies.len() == cluster.sent),
        p99(&cluster),
        verdict(p99(&outside) <= 1.0 && outside.latencies.len() == outside.sent),
        p99(&outside)
    ));
    print!("{section}");
    write_section("dns", &section);
}
