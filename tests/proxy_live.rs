//! The service proxy on a live seed lab, in each of its three modes: load balancing reaches
//! every replica (netexec's /hostname), the source address a pod sees (/clientip) for
//! ClusterIP and NodePort traffic, `externalTrafficPolicy: Local`, and scaling 2 → 3 → 1
//! reaching the rules of every node.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Lab, wait_for};

const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];

const ECHO: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: echo}
spec:
  replicas: 2
  selector: {app: echo}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
        args: [netexec, --http-port=8080, --udp-port=-1]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-nodeport}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - name: pause
    image: registry.k8s.io/pause:3.10
"#;

/// `curl` `n` times from a host of the lab; the answers, one per line.
fn curl_many(lab: &Lab, host: &str, url: &str, n: usize) -> Vec<String> {
    let script = format!("for i in $(seq {n}); do curl -s -m 2 {url}; echo; done");
    let out = lab.exec(host, &["sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `curl` once from inside a pod's network namespace.
fn curl_from_pod(lab: &Lab, pod: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod_ns(pod),
            "curl",
            "-s",
            "-m",
            "2",
            url,
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !body.is_empty()).then_some(body)
}

/// The echo pods that are Running: name → (node, pod IP).
fn echo_pods(lab: &Lab) -> Vec<(String, String, String)> {
    let out = lab.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=echo",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName} {.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[1] == "Running" && f.get(4).is_none_or(|d| d.is_empty()))
        .map(|f| (f[0].to_string(), f[2].to_string(), f[3].to_string()))
        .collect()
}

fn node_port(lab: &Lab, service: &str) -> String {
    lab.jsonpath(&format!("svc/{service}"), "{.spec.ports[0].nodePort}")
}

/// Every node's proxy sends the ClusterIP's traffic to exactly the running replicas.
fn every_node_balances_over_the_replicas(lab: &Lab, url: &str, replicas: usize) {
    let want = wait_for(
        &format!("{replicas} echo replicas Running"),
        Duration::from_secs(60),
        || {
            let pods = echo_pods(lab);
            (pods.len() == replicas).then(|| pods.into_iter().map(|p| p.0).collect())
        },
    );
    let want: BTreeSet<String> = want;
    for node in NODES {
        wait_for(
            &format!("{node} to balance over {want:?}"),
            Duration::from_secs(30),
            || {
                let seen: BTreeSet<String> = curl_many(lab, node, url, 12 * replicas)
                    .into_iter()
                    .collect();
                (seen == want).then_some(())
            },
        );
    }
}

fn scenario(mode: &str) {
    let lab = Lab::up("topologies/seed.yaml", "px", &["--proxy-mode", mode]);
    lab.apply(ECHO);
    let cluster_ip = lab.jsonpath("svc/echo", "{.spec.clusterIP}");
    let hostname_url = format!("http://{cluster_ip}/hostname");
    let clientip_url = format!("http://{cluster_ip}/clientip");

    // Load balancing reaches both replicas, from every node.
    every_node_balances_over_the_replicas(&lab, &hostname_url, 2);
    let pods = echo_pods(&lab);

    // The source address the endpoint sees, from a pod that is not an endpoint itself (an
    // endpoint reaching itself is masqueraded, as with kube-proxy). In the kernel modes the
    // pod's own address survives (no masquerade inside the cluster network); the userspace
    // proxy opens a new connection from the source's node.
    let source_pod = "client";
    let (source_node, source_ip) = wait_for("the client pod", Duration::from_secs(30), || {
        let out = lab.jsonpath(
            "pod/client",
            "{.status.phase} {.spec.nodeName} {.status.podIP}",
        );
        let f: Vec<&str> = out.split(' ').collect();
        (f.len() == 3 && f[0] == "Running").then(|| (f[1].to_string(), f[2].to_string()))
    });
    let (source_node, source_ip) = (&source_node, &source_ip);
    let seen = wait_for(
        "a pod reaches the ClusterIP",
        Duration::from_secs(30),
        || curl_from_pod(&lab, source_pod, &clientip_url),
    );
    let seen_ip = seen.rsplit_once(':').map_or(seen.as_str(), |(ip, _)| ip);
    if mode == "userspace" {
        let node_ips = lab.exec(source_node, &["ip", "-o", "-4", "addr", "show"]);
        let node_ips = String::from_utf8_lossy(&node_ips.stdout).into_owned();
        assert!(
            node_ips.contains(&format!("inet {seen_ip}/")),
            "userspace: {seen_ip} is not an address of {source_node}:\n{node_ips}"
        );
    } else {
        assert_eq!(
            seen_ip, source_ip,
            "{mode}: pod → ClusterIP keeps the pod's IP"
        );
    }

    // NodePort from the outside client: masqueraded to a node address with the default
    // policy, so replies come back through the node.
    let np = node_port(&lab, "echo-nodeport");
    for node in NODES {
        let answers = wait_for("the NodePort answers", Duration::from_secs(30), || {
            let a = curl_many(&lab, "client", &format!("http://{node}:{np}/clientip"), 1);
            (!a.is_empty()).then_some(a)
        });
        assert!(
            !answers[0].starts_with("192.168.0.100:"),
            "{mode}: NodePort on {node} did not masquerade the client: {answers:?}"
        );
    }

    // externalTrafficPolicy: Local: a node with a local replica answers (in the kernel modes
    // with the client's own address); a node without one does not.
    let local_np = node_port(&lab, "echo-local");
    let with_replica: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    for node in NODES {
        let url = format!("http://{node}:{local_np}/clientip");
        if with_replica.contains(node) {
            let answers = wait_for(
                "the Local NodePort answers",
                Duration::from_secs(30),
                || {
                    let a = curl_many(&lab, "client", &url, 1);
                    (!a.is_empty()).then_some(a)
                },
            );
            if mode != "userspace" {
                assert!(
                    answers[0].starts_with("192.168.0.100:"),
                    "{mode}: Local policy must keep the client's address: {answers:?}"
                );
            }
        } else {
            wait_for(
                "a node without a local endpoint to drop Local NodePort traffic",
                Duration::from_secs(30),
                || curl_many(&lab, "client", &url, 1).is_empty().then_some(()),
            );
        }
    }

    // Scaling 2 → 3 → 1 reaches every node.
    lab.kubectl_ok(&["scale", "rc", "echo", "--replicas=3"]);
    every_node_balances_over_the_replicas(&lab, &hostname_url, 3);
    lab.kubectl_ok(&["scale", "rc", "echo", "--replicas=1"]);
    every_node_balances_over_the_replicas(&lab, &hostname_url, 1);
}

#[test]
fn proxy_userspace() {
    scenario("userspace");
}

#[test]
fn proxy_iptables() {
    scenario("iptables");
}

#[test]
fn proxy_nftables() {
    scenario("nftables");
}
