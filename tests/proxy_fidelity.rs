//! The service proxy behaves as kube-proxy where a user reproducing a bug would notice
//! (issue 17), on live seed labs:
//!
//! - a UDP client that keeps its source port recovers from a pod replacement within one
//!   sync, because stale conntrack entries are deleted (kube-proxy ≥ 1.32's reconciler,
//!   kemu's profile); with kube-proxy 1.1's profile (no cleanup) it keeps sending to the
//!   deleted pod, as issue #19029 reported;
//! - `curl 127.0.0.1:<nodePort>` on a node answers (localhost NodePorts), the nfacct counter
//!   `localhost_nps_accepted_pkts` moves and is on the metrics endpoint, and the health
//!   endpoints answer as kube-proxy's;
//! - with kube-proxy 1.20's profile a mode switch leaves the old mode's rules in place, as
//!   kube-proxy since 1.15 does without `--cleanup`.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Lab, temp_file, wait_for};

/// One netexec replica answering UDP on 8081, behind a UDP ClusterIP Service on port 53.
const UDP_ECHO: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: udp}
spec:
  replicas: 1
  selector: {app: udp}
  template:
    metadata: {labels: {app: udp}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        args: [netexec, --http-port=8080, --udp-port=8081]
---
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp}
  ports: [{name: dns, port: 53, targetPort: 8081, protocol: UDP}]
"#;

/// The seed topology in iptables mode, as kube-proxy `version` when given.
fn seed_topology(version: Option<&str>, mode: &str) -> (tempfile::TempDir, String) {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/seed.yaml"))
            .unwrap();
    let proxy = match version {
        Some(v) => format!("proxy:\n  mode: {mode}\n  version: \"{v}\"\n"),
        None => format!("proxy:\n  mode: {mode}\n"),
    };
    let text = seed.replace(
        "proxy:\n  mode: userspace                 # the 2015 kube-proxy\n",
        &proxy,
    );
    assert!(
        text.contains(&proxy),
        "the seed topology's proxy block moved"
    );
    let (dir, path) = temp_file("seed.yaml", &text);
    (dir, path.display().to_string())
}

/// The running `udp` pod: (name, IP).
fn udp_pod(lab: &Lab) -> Option<(String, String)> {
    let out = lab.kubectl_ok(&[
        "get", "pods", "-l", "app=udp", "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[1] == "Running" && f.get(3).is_none_or(|d| d.is_empty()))
        .map(|f| (f[0].to_string(), f[2].to_string()))
}

/// A UDP "statsd" client on a node: asks `hostname` from source port 40000 twice a second
/// and appends each answer (or an empty line) to a file, so its conntrack entry stays alive.
struct Sender {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Sender {
    fn start(lab: &Lab, host: &str, ip: &str) -> Sender {
        let (dir, log) = temp_file("answers", "");
        let script = format!(
            "while :; do r=$(echo hostname | nc -u -w1 -p 40000 {ip} 53); echo \"$r\" >> {}; sleep 0.5; done",
            log.display()
        );
        let child = common::kemu()
            .args(["exec", &lab.name, host, "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sender {
            child,
            log,
            _dir: dir,
        }
    }

    fn answers(&self) -> Vec<String> {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text.lines().map(str::to_string).collect()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `hostname` query from a fresh source port: the answer, if any.
fn ask(lab: &Lab, host: &str, ip: &str) -> String {
    let out = lab.exec(
        host,
        &["sh", "-c", &format!("echo hostname | nc -u -w1 {ip} 53")],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Replace the one `udp` pod while a sender on node .202 keeps its flow; return the sender,
/// the new pod's name and the index of the first answer written after the new pod answered
/// a fresh client (so every node's rules already point at it).
fn replace_pod_under_traffic(lab: &Lab) -> (Sender, String, usize) {
    lab.apply(UDP_ECHO);
    let cluster_ip = lab.jsonpath("svc/udp", "{.spec.clusterIP}");
    let (old, _) = wait_for("the udp pod", Duration::from_secs(60), || udp_pod(lab));
    let sender = Sender::start(lab, "192.168.0.202", &cluster_ip);
    wait_for(
        "the sender to reach the first pod",
        Duration::from_secs(60),
        || sender.answers().contains(&old).then_some(()),
    );
    lab.kubectl_ok(&["delete", "pod", &old, "--wait=false"]);
    let (new, _) = wait_for("the replacement pod", Duration::from_secs(90), || {
        udp_pod(lab).filter(|(name, _)| *name != old)
    });
    wait_for(
        "a fresh client to reach the new pod",
        Duration::from_secs(60),
        || (ask(lab, "192.168.0.202", &cluster_ip) == new).then_some(()),
    );
    let from = sender.answers().len();
    (sender, new, from)
}

#[test]
fn stale_udp_flow_recovers_after_a_pod_replacement() {
    let (_dir, topology) = seed_topology(None, "iptables");
    let lab = Lab::up(&topology, "ctk", &[]);
    let (sender, new, from) = replace_pod_under_traffic(&lab);
    // The sync that put the new pod in the rules also deleted the flow's entry, so the
    // sender's next query is DNATed anew.
    wait_for(
        "the long-lived flow to reach the new pod",
        Duration::from_secs(30),
        || sender.answers()[from..].contains(&new).then_some(()),
    );
}

#[test]
fn stale_udp_flow_persists_with_kube_proxy_1_1() {
    let (_dir, topology) = seed_topology(Some("1.1"), "iptables");
    let lab = Lab::up(&topology, "ct11", &[]);
    let (sender, new, from) = replace_pod_under_traffic(&lab);
    // Six more queries on the old flow: its conntrack entry still sends them to the
    // deleted pod, while fresh clients reach the new one.
    let answers = wait_for("six more queries", Duration::from_secs(60), || {
        let all = sender.answers();
        (all.len() >= from + 6).then(|| all[from..].to_vec())
    });
    assert!(
        !answers.contains(&new) && answers.iter().all(String::is_empty),
        "kube-proxy 1.1 had no conntrack cleanup, yet the old flow reached {new}: {answers:?}"
    );
}

const WEB: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: web}
spec:
  replicas: 1
  selector: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        args: [netexec, --http-port=8080, --udp-port=-1]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn curl(lab: &Lab, host: &str, url: &str) -> (String, String) {
    let out = lab.exec(
        host,
        &["curl", "-s", "-m", "2", "-w", "\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn localhost_node_ports_counters_and_health_endpoints() {
    let (_dir, topology) = seed_topology(None, "iptables");
    let lab = Lab::up(&topology, "lnp", &[]);
    lab.apply(WEB);
    let node_port = lab.jsonpath("svc/web", "{.spec.ports[0].nodePort}");
    let pod_node = wait_for("the web pod", Duration::from_secs(60), || {
        let out = lab.jsonpath("pods", "{.items[0].status.phase} {.items[0].spec.nodeName}");
        out.strip_prefix("Running ").map(str::to_string)
    });
    let node = "192.168.0.202";
    let counter = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total";
    let before = metric(
        &curl(&lab, node, "http://127.0.0.1:10249/metrics").0,
        counter,
    )
    .expect("the localhost NodePort counter is on the metrics endpoint");
    // curl 127.0.0.1:<nodePort> on a node reaches the service, as with kube-proxy.
    let hostname = wait_for(
        "a localhost NodePort answer",
        Duration::from_secs(60),
        || {
            let (body, code) = curl(
                &lab,
                node,
                &format!("http://127.0.0.1:{node_port}/hostname"),
            );
            (code == "200" && !body.is_empty()).then_some(body)
        },
    );
    assert!(hostname.starts_with("web-"), "{hostname}");
    let (metrics, _) = curl(&lab, node, "http://127.0.0.1:10249/metrics");
    let after = metric(&metrics, counter).unwrap();
    assert!(
        after > before,
        "{counter} did not move: {before} -> {after}"
    );
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count "));
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} "));
    assert!(metrics.contains("kubeproxy_iptables_ct_state_invalid_dropped_packets_total "));
    assert_eq!(
        curl(&lab, node, "http://127.0.0.1:10249/proxyMode").0,
        "iptables"
    );
    // kube-proxy's health endpoint.
    let (body, code) = curl(&lab, node, "http://127.0.0.1:10256/healthz");
    assert_eq!(code, "200", "{body}");
    assert!(
        body.starts_with("{\"lastUpdated\": \"") && body.ends_with(", \"nodeEligible\": true}"),
        "{body}"
    );
    // The health check node port: 200 where the pod runs, 503 elsewhere.
    for host in ["192.168.0.201", "192.168.0.202", "192.168.0.203"] {
        let want = if host == pod_node { "200" } else { "503" };
        let (body, code) = wait_for(
            "the health check node port",
            Duration::from_secs(30),
            || {
                let (body, code) = curl(&lab, "client", &format!("http://{host}:32100/"));
                (code == want).then_some((body, code))
            },
        );
        assert_eq!(code, want);
        assert!(body.contains("\"name\": \"web-local\""), "{body}");
    }
}

#[test]
fn kube_proxy_1_20_leaves_the_old_modes_rules_on_a_switch() {
    let (_dir, topology) = seed_topology(Some("1.20"), "userspace");
    let lab = Lab::up(&topology, "msw", &[]);
    let node = "192.168.0.202";
    let save = |lab: &Lab| {
        String::from_utf8_lossy(&lab.exec(node, &["iptables-save", "-t", "nat"]).stdout)
            .into_owned()
    };
    wait_for("the userspace chains", Duration::from_secs(30), || {
        save(&lab).contains(":KUBE-PORTALS-CONTAINER").then_some(())
    });
    let out = common::kemu()
        .args(["proxy", "mode", &lab.name, "iptables", "--host", node])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nat = save(&lab);
    assert!(nat.contains(":KUBE-SERVICES"), "{nat}");
    assert!(
        nat.contains(":KUBE-PORTALS-CONTAINER") && nat.contains("-j KUBE-PORTALS-CONTAINER"),
        "kube-proxy 1.20 leaves the userspace rules in place:\n{nat}"
    );
}
