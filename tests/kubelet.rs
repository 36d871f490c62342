//! End to end: the kubelet and flanneld on a real lab, driven with the real kubectl. Pods are
//! pinned with `nodeName` so these tests do not depend on the scheduler.

mod common;

use std::time::Duration;

use common::*;

const TOPOLOGY: &str = "tests/fixtures/topologies/ok/kubelet.yaml";
const LONG: Duration = Duration::from_secs(30);

fn pod(name: &str, node: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: main\n    image: {image}\n{extra}"
    )
}

fn netexec(name: &str, node: &str) -> String {
    pod(
        name,
        node,
        "registry.k8s.io/e2e-test-images/agnhost:2.53",
        "    args: [netexec, --http-port=8080, --udp-port=-1]\n    ports: [{containerPort: 8080}]\n    env:\n    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: GREETING, value: \"hi $(MY_POD)\"}\n",
    )
}

fn wait_running(lab: &Lab, pod: &str) {
    wait_for(&format!("pod {pod} Running and Ready"), LONG, || {
        let ready = lab.jsonpath(
            &format!("pod/{pod}"),
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        );
        (ready == "True").then_some(())
    });
}

fn http_get(ns: &str, ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let handle = kemu::netns::NetNs::open(ns).unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let path = path.to_string();
    handle
        .run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[test]
fn pods_get_subnet_ips_reach_each_other_and_serve_logs_and_exec() {
    let lab = Lab::up(TOPOLOGY, "kl", &[]);
    lab.apply(&netexec("a", "192.168.0.202"));
    lab.apply(&netexec("b", "192.168.0.203"));
    wait_running(&lab, "a");
    wait_running(&lab, "b");
    let ip_a = lab.jsonpath("pod/a", "{.status.podIP}");
    let ip_b = lab.jsonpath("pod/b", "{.status.podIP}");
    assert!(
        ip_a.starts_with("172.16.2."),
        "{ip_a} is in 192.168.0.202's subnet 172.16.2.0/24"
    );
    assert!(
        ip_b.starts_with("172.16.3."),
        "{ip_b} is in 192.168.0.203's subnet 172.16.3.0/24"
    );
    assert_eq!(lab.jsonpath("pod/a", "{.status.hostIP}"), "192.168.0.202");

    // Pod a reaches pod b across nodes, through flannel.1 of both hosts.
    let before = counters(&lab.ns("192.168.0.203"), "flannel.1");
    let seen = http_get(&lab.pod_ns("a"), &ip_b, 8080, "/clientip").unwrap();
    assert!(
        seen.starts_with(&format!("{ip_a}:")),
        "b saw the client {seen:?}, expected pod a's address {ip_a}"
    );
    assert_eq!(
        http_get(&lab.pod_ns("a"), &ip_b, 8080, "/hostname").unwrap(),
        "b"
    );
    let after = counters(&lab.ns("192.168.0.203"), "flannel.1");
    assert!(
        after.rx_packets > before.rx_packets,
        "the packets crossed flannel.1"
    );

    // logs and exec through the API server and the kubelet.
    let logs = lab.kubectl_ok(&["logs", "a"]);
    assert!(logs.contains("Started HTTP server on port 8080"), "{logs}");
    let env = lab.kubectl_ok(&[
        "exec",
        "a",
        "--",
        "sh",
        "-c",
        "echo $MY_POD $MY_IP $GREETING; hostname",
    ]);
    assert_eq!(env, format!("a {ip_a} hi a\na\n"));
    let failed = lab.kubectl(&["exec", "a", "--", "sh", "-c", "exit 3"]);
    assert_eq!(
        failed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    // The pod's events read like a real kubelet's.
    let describe = lab.kubectl_ok(&["describe", "pod", "a"]);
    for line in [
        "Container image \"registry.k8s.io/e2e-test-images/agnhost:2.53\" already present on machine",
        "Created container: main",
        "Started container main",
    ] {
        assert!(
            describe.contains(line),
            "describe lacks {line:?}:\n{describe}"
        );
    }
}

#[test]
fn deleting_a_pod_removes_its_namespace_veth_and_address() {
    let lab = Lab::up(TOPOLOGY, "kd", &[]);
    lab.apply(&pod(
        "web",
        "192.168.0.201",
        "nginx",
        "    ports: [{containerPort: 80}]\n",
    ));
    wait_running(&lab, "web");
    let ns = lab.pod_ns("web");
    let ip = lab.jsonpath("pod/web", "{.status.podIP}");
    assert!(kemu::netns::exists(&ns));
    let page = http_get(&lab.ns("192.168.0.203"), &ip, 80, "/").unwrap();
    assert!(page.contains("<title>Welcome to nginx!</title>"));
    lab.kubectl_ok(&["delete", "pod", "web"]);
    assert!(!kemu::netns::exists(&ns), "pod namespace left behind");
    let links = std::process::Command::new("ip")
        .args(["-n", &lab.ns("192.168.0.201"), "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("veth"),
        "veth left behind"
    );
    let ipam = format!(
        "/run/kemu/{}/hosts/192.168.0.201/kubelet/ipam/{ip}",
        lab.name
    );
    assert!(
        !std::path::Path::new(&ipam).exists(),
        "address {ip} still allocated"
    );
}

#[test]
fn a_crashing_container_backs_off_and_a_failing_readiness_probe_keeps_a_pod_unready() {
    let lab = Lab::up(TOPOLOGY, "kc", &[]);
    lab.apply(&pod(
        "crash",
        "192.168.0.202",
        "debian",
        "    command: [sh, -c, \"echo boom; exit 2\"]\n",
    ));
    lab.apply(&pod(
        "unready",
        "192.168.0.203",
        "nginx",
        "    ports: [{containerPort: 80}]\n    readinessProbe:\n      httpGet: {path: /healthz, port: 80}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    ));
    // Restarts come after 0 s, 1 s, 2 s, 4 s: the back-off grows.
    let message = wait_for("CrashLoopBackOff with a 4s back-off", LONG, || {
        let reason = lab.jsonpath(
            "pod/crash",
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        let message = lab.jsonpath(
            "pod/crash",
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        (reason == "CrashLoopBackOff" && message.starts_with("back-off 4s")).then_some(message)
    });
    assert!(
        message.contains("restarting failed container=main pod=crash_default("),
        "{message}"
    );
    let restarts: i32 = lab
        .jsonpath("pod/crash", "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap();
    assert!(restarts >= 3, "restartCount {restarts}");
    assert_eq!(
        lab.jsonpath(
            "pod/crash",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "2"
    );
    assert_eq!(lab.kubectl_ok(&["logs", "crash", "--previous"]), "boom\n");
    let table = lab.kubectl_ok(&["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    wait_for("the unready pod running", LONG, || {
        (lab.jsonpath("pod/unready", "{.status.phase}") == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.jsonpath(
            "pod/unready",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "False"
    );
    let events = lab.kubectl_ok(&["describe", "pod", "unready"]);
    assert!(
        events.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
}

#[test]
fn unknown_images_need_a_command() {
    let lab = Lab::up(TOPOLOGY, "ki", &[]);
    lab.apply(&pod("redis", "192.168.0.202", "redis:7", ""));
    let message = wait_for("ErrImagePull or ImagePullBackOff", LONG, || {
        let reason = lab.jsonpath(
            "pod/redis",
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        let message = lab.jsonpath(
            "pod/redis",
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(message)
    });
    assert!(
        message.contains("nginx, registry.k8s.io/e2e-test-images/agnhost"),
        "{message}"
    );
}

#[test]
fn a_pod_cannot_write_outside_its_sandbox() {
    let lab = Lab::up(TOPOLOGY, "ks", &[]);
    lab.apply(&pod(
        "root",
        "192.168.0.202",
        "debian",
        "    command: [sleep, \"3600\"]\n    securityContext: {runAsUser: 0}\n",
    ));
    lab.apply(&pod(
        "nobody",
        "192.168.0.202",
        "debian",
        "    command: [sleep, \"3600\"]\n",
    ));
    wait_running(&lab, "root");
    wait_running(&lab, "nobody");
    let state_file = format!("/run/kemu/{}/lab.json", lab.name);
    for who in ["root", "nobody"] {
        for target in [
            "/etc/kemu-escape",
            "/root/kemu-escape",
            "/usr/kemu-escape",
            "/work/kemu-escape",
            "/var/kemu-escape",
        ] {
            let out = lab.kubectl(&["exec", who, "--", "sh", "-c", &format!("echo x > {target}")]);
            assert!(!out.status.success(), "{who} wrote {target}");
            assert!(!std::path::Path::new(target).exists());
        }
        // The host's /run (lab state, namespaces) is not even visible.
        let out = lab.kubectl(&["exec", who, "--", "cat", &state_file]);
        assert!(!out.status.success(), "{who} read the lab state");
        // Its own /tmp is writable and private.
        lab.kubectl_ok(&["exec", who, "--", "sh", "-c", "echo ok > /tmp/mine"]);
    }
    let out = lab.kubectl(&["exec", "root", "--", "mount", "-o", "remount,rw", "/"]);
    assert!(!out.status.success(), "root in a container could remount /");
    assert_eq!(
        lab.kubectl_ok(&["exec", "nobody", "--", "id", "-u"]),
        "65534\n"
    );
    assert_eq!(
        lab.kubectl_ok(&["exec", "root", "--", "sh", "-c", "echo $$"])
            .trim()
            .parse::<u32>()
            .map(|p| p > 1),
        Ok(true)
    );
    assert_eq!(
        lab.kubectl_ok(&["exec", "nobody", "--", "cat", "/proc/1/cmdline"]),
        "sleep\u{0}3600\u{0}"
    );
}

fn agent_pid(lab: &Lab, host: &str, name: &str) -> i32 {
    let status: serde_json::Value =
        serde_json::from_slice(&run_kemu(&["status", &lab.name, "-o", "json"]).stdout).unwrap();
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == host && a["name"] == name && a["state"] == "running")
        .and_then(|a| a["pid"].as_i64())
        .map(|p| p as i32)
        .unwrap_or(0)
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn a_killed_kubelet_is_restarted_and_adopts_its_pods() {
    let lab = Lab::up(TOPOLOGY, "kk", &[]);
    lab.apply(&netexec("survivor", "192.168.0.203"));
    wait_running(&lab, "survivor");
    let started = lab.jsonpath(
        "pod/survivor",
        "{.status.containerStatuses[0].state.running.startedAt}",
    );
    let ip = lab.jsonpath("pod/survivor", "{.status.podIP}");
    let kubelet = agent_pid(&lab, "192.168.0.203", "kubelet");
    sigkill(kubelet);
    let again = wait_for("a new kubelet", LONG, || {
        let pid = agent_pid(&lab, "192.168.0.203", "kubelet");
        (pid != 0 && pid != kubelet).then_some(pid)
    });
    assert_ne!(again, kubelet);
    // The pod never stopped: same container, no restart, still answering.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        lab.jsonpath(
            "pod/survivor",
            "{.status.containerStatuses[0].state.running.startedAt}"
        ),
        started
    );
    assert_eq!(
        lab.jsonpath(
            "pod/survivor",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert_eq!(
        http_get(&lab.ns("192.168.0.201"), &ip, 8080, "/hostname").unwrap(),
        "survivor"
    );
    // The new kubelet owns it: logs, exec and deletion work and leave nothing behind.
    assert!(
        lab.kubectl_ok(&["logs", "survivor"])
            .contains("Started HTTP server")
    );
    assert_eq!(
        lab.kubectl_ok(&["exec", "survivor", "--", "hostname"]),
        "survivor\n"
    );
    let ns = lab.pod_ns("survivor");
    lab.kubectl_ok(&["delete", "pod", "survivor"]);
    assert!(!kemu::netns::exists(&ns));
}

#[test]
fn a_killed_flanneld_keeps_its_lease_and_the_overlay() {
    let lab = Lab::up(TOPOLOGY, "kf", &[]);
    let mac = || {
        lab.jsonpath(
            "node/192.168.0.202",
            "{.metadata.annotations.flannel\\.alpha\\.coreos\\.com/backend-data}",
        )
    };
    let before_mac = mac();
    let before_cidr = lab.jsonpath("node/192.168.0.202", "{.spec.podCIDR}");
    assert_eq!(before_cidr, "172.16.2.0/24");
    lab.apply(&netexec("peer", "192.168.0.202"));
    wait_running(&lab, "peer");
    let ip = lab.jsonpath("pod/peer", "{.status.podIP}");
    let flanneld = agent_pid(&lab, "192.168.0.202", "flanneld");
    sigkill(flanneld);
    wait_for("a new flanneld", LONG, || {
        let pid = agent_pid(&lab, "192.168.0.202", "flanneld");
        (pid != 0 && pid != flanneld).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mac(), before_mac, "the VTEP MAC survived the restart");
    assert_eq!(
        lab.jsonpath("node/192.168.0.202", "{.spec.podCIDR}"),
        before_cidr
    );
    let env = std::fs::read_to_string(format!(
        "/run/kemu/{}/hosts/192.168.0.202/subnet.env",
        lab.name
    ))
    .unwrap();
    assert!(env.contains("FLANNEL_SUBNET=172.16.2.1/24"), "{env}");
    assert_eq!(
        http_get(&lab.ns("192.168.0.203"), &ip, 8080, "/hostname").unwrap(),
        "peer"
    );
}
