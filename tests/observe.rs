//! Seeing what happens in a live lab: `kemu exec` into pods by name, `kemu conntrack` after a
//! real connection, `kemu events` with pod lifecycle, endpoints, proxy syncs and faults,
//! `kemu reach` with counts, sizes, UDP and the client address, `kemu capture` read back by
//! tcpdump, and `kemu trace` rule by rule (leaving the rules as they were). Each command runs
//! against real traffic; nothing is asserted on time. Needs root.

mod common;
mod images_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Lab, kemu, run_kemu, wait_for};
use images_support::{Entry::*, *};

const TOPOLOGY: &str = "topologies/seed.yaml";
const MASTER: &str = "192.168.0.201";
const A: &str = "192.168.0.202";
const B: &str = "192.168.0.203";
const LONG: Duration = Duration::from_secs(60);

/// Two netexec replicas (built-in agnhost) behind a NodePort Service with a TCP and a UDP
/// port, and an nginx pod on node A.
const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: netexec\n        image: registry.k8s.io/e2e-test-images/agnhost:2.52\n        args: [netexec, --http-port=8080, --udp-port=8081]\n        ports: [{containerPort: 8080}, {containerPort: 8081, protocol: UDP}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  type: NodePort\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: udp, port: 81, targetPort: 8081, protocol: UDP}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: nginx, labels: {app: nginx}}\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeName: 192.168.0.202\n  containers:\n  - {name: nginx, image: nginx, ports: [{containerPort: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: nginx}\nspec:\n  selector: {app: nginx}\n  ports: [{port: 8001, targetPort: 80}]\n";

fn lab_with_web(prefix: &str, extra: &[&str]) -> Lab {
    let lab = Lab::up(TOPOLOGY, prefix, extra);
    lab.apply(WEB);
    wait_for("web ready", LONG, || {
        (lab.jsonpath("deployment/web", "{.status.readyReplicas}") == "2").then_some(())
    });
    wait_for("nginx running", LONG, || {
        (lab.jsonpath("pod/nginx", "{.status.phase}") == "Running").then_some(())
    });
    lab
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kemu_out(args: &[&str]) -> std::process::Output {
    kemu().args(args).output().expect("run kemu")
}

/// (name, IP, node) of the web pods, in one read (pods come and go while scaling).
fn web_pods(lab: &Lab) -> Vec<(String, String, String)> {
    let rows = lab.jsonpath(
        "pods",
        "{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}",
    );
    rows.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, ip, node) = (w.next()?, w.next()?, w.next()?);
            name.starts_with("web-")
                .then(|| (name.to_string(), ip.to_string(), node.to_string()))
        })
        .collect()
}

#[test]
fn exec_enters_pods_by_name() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let lab = Lab::up_with_env(
        TOPOLOGY,
        "obx",
        &[],
        &[("KEMU_IMAGE_DIR", store.to_str().unwrap())],
    );
    // An image of the store: its own root filesystem, with /etc/hello.
    let layers = vec![
        layer(&[Dir("bin", 0o755), File("bin/kemu", 0o755, &kemu_binary())]),
        layer(&[
            Dir("etc", 0o755),
            File("etc/hello", 0o644, b"from the image\n"),
        ]),
    ];
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("img.tar");
    std::fs::write(
        &archive,
        docker_archive(
            &["kemu/obs:1"],
            &layers,
            &["/bin/kemu", "builtin-image", "agnhost", "pause"],
            None,
        ),
    )
    .unwrap();
    kemu_ok(
        store,
        &[
            "image",
            "load",
            "--lab",
            &lab.name,
            archive.to_str().unwrap(),
        ],
    );
    lab.apply(WEB);
    lab.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: boxed, namespace: default}\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeName: 192.168.0.203\n  containers:\n  - name: main\n    image: kemu/obs:1\n    imagePullPolicy: Never\n    command: [/bin/kemu, builtin-image, agnhost]\n    args: [netexec, --http-port=8080, --udp-port=-1]\n");
    wait_for("pods running", LONG, || {
        let phases = lab.jsonpath("pods", "{.items[*].status.phase}");
        (phases.split_whitespace().count() == 4
            && phases.split_whitespace().all(|p| p == "Running"))
        .then_some(())
    });

    // A built-in image: the pod's network, the host's tools, the pod's hostname.
    let (web, ip, _) = web_pods(&lab).remove(0);
    let out = kemu_out(&[
        "exec",
        &lab.name,
        &format!("pod/default/{web}"),
        "--",
        "hostname",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), web);
    let out = kemu_out(&[
        "exec",
        &lab.name,
        &format!("pod/{web}"),
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {ip}/")),
        "{}",
        text(&out)
    );
    // The pod's own exit status comes back.
    let out = kemu_out(&[
        "exec",
        &lab.name,
        &format!("pod/{web}"),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));

    // An image with its own root filesystem: its files, not the host's.
    let canary = work.path().join("host-canary");
    std::fs::write(&canary, "host only\n").unwrap();
    let mounttest = |file: &str| {
        kemu_out(&[
            "exec",
            &lab.name,
            "pod/default/boxed",
            "-c",
            "main",
            "--",
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            &format!("--file_content={file}"),
        ])
    };
    let out = mounttest("/etc/hello");
    assert!(
        out.status.success() && text(&out).contains("from the image"),
        "{}",
        text(&out)
    );
    let out = mounttest(canary.to_str().unwrap());
    assert!(
        !out.status.success(),
        "the host's file is visible: {}",
        text(&out)
    );

    // Errors name what is wrong.
    let out = kemu_out(&[
        "exec",
        &lab.name,
        "pod/default/boxed",
        "-c",
        "nope",
        "--",
        "true",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("choose one of: [main]"),
        "{}",
        text(&out)
    );
    let out = kemu_out(&["exec", &lab.name, "pod/default/absent", "--", "true"]);
    assert!(
        !out.status.success() && text(&out).contains("pod default/absent not found"),
        "{}",
        text(&out)
    );
}

#[test]
fn conntrack_shows_the_entry_of_a_connection_just_made() {
    let lab = lab_with_web("obc", &["--proxy-mode", "iptables"]);
    let node_port = lab.jsonpath("service/web", "{.spec.ports[0].nodePort}");
    let pods = web_pods(&lab);
    let pod_ips: Vec<&str> = pods.iter().map(|(_, ip, _)| ip.as_str()).collect();
    // From the client to node A's NodePort: A DNATs to a pod and masquerades.
    let target = format!("{A}:{node_port}");
    let out = lab.exec(
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "5",
            &format!("http://{target}/hostname"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // And to nginx's ClusterIP from node B, which the web filter must leave out.
    let nginx_ip = lab.jsonpath("service/nginx", "{.spec.clusterIP}");
    let out = lab.exec(
        B,
        &["curl", "-s", "-m", "5", &format!("http://{nginx_ip}:8001/")],
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = run_kemu(&[
        "conntrack",
        &lab.name,
        A,
        "--service",
        "default/web",
        "-o",
        "json",
    ]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let entry = entries
        .iter()
        .find(|e| {
            e["protocol"] == "tcp"
                && e["original"]["src"] == "192.168.0.100"
                && format!(
                    "{}:{}",
                    e["original"]["dst"].as_str().unwrap(),
                    e["original"]["dport"]
                ) == target
        })
        .unwrap_or_else(|| panic!("no entry of the client's connection to {target}: {entries:#?}"));
    let backend = entry["reply"]["src"].as_str().unwrap();
    assert!(
        pod_ips.contains(&backend),
        "DNAT to {backend}, pods {pod_ips:?}"
    );
    assert_eq!(entry["reply"]["sport"], 8080);
    let flags: Vec<&str> = entry["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        flags.contains(&"DNAT") && flags.contains(&"SNAT"),
        "{flags:?}"
    );
    // The table view names the NAT too.
    let table =
        String::from_utf8(run_kemu(&["conntrack", &lab.name, A, "--service", "web"]).stdout)
            .unwrap();
    assert!(table.contains(&format!("dnat {backend}:8080")), "{table}");

    // Node B's table holds the nginx connection; the web filter drops it.
    let all = String::from_utf8(run_kemu(&["conntrack", &lab.name, B]).stdout).unwrap();
    assert!(all.contains(&format!("{nginx_ip}:8001")), "{all}");
    let web_only = String::from_utf8(
        run_kemu(&["conntrack", &lab.name, B, "--service", "default/web"]).stdout,
    )
    .unwrap();
    assert!(
        !web_only.contains(&format!("{nginx_ip}:8001")),
        "{web_only}"
    );
    // A missing Service is an error.
    let out = kemu_out(&["conntrack", &lab.name, A, "--service", "default/absent"]);
    assert!(!out.status.success() && text(&out).contains("service default/absent not found"));
}

/// The events of `kemu events -o json`.
fn events(lab: &Lab) -> Vec<serde_json::Value> {
    let out = run_kemu(&["events", &lab.name, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn events_show_one_time_line_of_lifecycle_endpoints_syncs_and_faults() {
    let lab = lab_with_web("obe", &["--proxy-mode", "iptables"]);
    // Follow from before the faults: what they do must stream.
    let mut follow = kemu()
        .args([
            "events",
            &lab.name,
            "--follow",
            "-o",
            "json",
            "--interval",
            "200ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });

    run_kemu(&["partition", &lab.name, B, "--plane", "data"]);
    run_kemu(&["heal", &lab.name]);
    run_kemu(&["agent", "kill", &lab.name, A, "proxy"]);
    // An endpoint goes: the slice changes and every proxy syncs.
    lab.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    wait_for("one web pod", LONG, || {
        (web_pods(&lab).len() == 1).then_some(())
    });

    let mut streamed = Vec::new();
    let seen_removal = |v: &[serde_json::Value]| {
        v.iter().any(|e| {
            e["source"] == "fault"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("removed: partition")
        })
    };
    wait_for("the heal to stream", LONG, || {
        while let Ok(v) = rx.try_recv() {
            streamed.push(v);
        }
        seen_removal(&streamed).then_some(())
    });
    // The streamed slice change names the endpoint that went.
    wait_for("the endpoint change to stream", LONG, || {
        while let Ok(v) = rx.try_recv() {
            streamed.push(v);
        }
        streamed
            .iter()
            .any(|e| {
                e["source"] == "endpoints" && e["message"].as_str().unwrap().contains("-172.16.")
            })
            .then_some(())
    });
    // Stop the follower this test started, by its PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = follow.wait();

    // The supervisor starts the killed proxy again after its back-off.
    wait_for("the proxy's restart in the time line", LONG, || {
        events(&lab)
            .iter()
            .any(|e| e["source"] == "agent" && e["object"] == format!("agent/{A}/proxy"))
            .then_some(())
    });
    let all = events(&lab);
    let times: Vec<&str> = all.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|t| t.parse::<jiff::Timestamp>().unwrap());
    assert_eq!(times, sorted, "events are in time order");
    let has = |source: &str, object: &str, text: &str| {
        all.iter().any(|e| {
            e["source"] == source
                && e["object"].as_str().unwrap().starts_with(object)
                && e["message"].as_str().unwrap().contains(text)
        })
    };
    assert!(
        has(
            "fault",
            "lab",
            &format!("applied: partition (data plane): {B}")
        ),
        "{all:#?}"
    );
    assert!(
        has(
            "fault",
            "lab",
            &format!("removed: partition (data plane): {B}")
        ),
        "{all:#?}"
    );
    for node in [MASTER, A, B] {
        assert!(
            has("proxy", &format!("host/{node}"), "iptables"),
            "no sync of {node}: {all:#?}"
        );
        assert!(
            has("node", &format!("node/{node}"), "Ready=True"),
            "{all:#?}"
        );
    }
    assert!(has("event", "pod/default/nginx", "Started"), "{all:#?}");
    assert!(
        has("fault", "lab", &format!("agent {A}/proxy: killed")),
        "{all:#?}"
    );
    assert!(
        has(
            "agent",
            &format!("agent/{A}/proxy"),
            "restarted (restart 1)"
        ),
        "{all:#?}"
    );
    assert!(
        has("event", "replicaset/default/web-", "SuccessfulDelete"),
        "{all:#?}"
    );
    assert!(
        has("endpoints", "slice/default/web-", "endpoints 172.16."),
        "{all:#?}"
    );
    // The applied fault comes before its removal.
    let at = |text: &str| {
        all.iter()
            .position(|e| e["message"].as_str().unwrap().starts_with(text))
            .unwrap()
    };
    assert!(at("applied: partition") < at("removed: partition"));
}

/// The cells of `kemu reach LAB ARGS... -o json`.
fn reach(lab: &Lab, args: &[&str]) -> Vec<serde_json::Value> {
    let mut argv = vec!["reach", &lab.name, "-o", "json", "--no-probe-pods"];
    argv.extend_from_slice(args);
    let out = run_kemu(&argv);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["cells"].as_array().unwrap().clone()
}

fn cell<'a>(cells: &'a [serde_json::Value], source: &str, target: &str) -> &'a serde_json::Value {
    cells
        .iter()
        .find(|c| c["source"] == source && c["target"] == target)
        .unwrap_or_else(|| panic!("no cell {source} -> {target}: {cells:#?}"))
}

/// The first address of a node's pod subnet (its flannel.1 address, which masquerades).
fn overlay_address(lab: &Lab, node: &str) -> String {
    let cidr = lab.jsonpath(&format!("node/{node}"), "{.spec.podCIDR}");
    cidr.split('/').next().unwrap().to_string()
}

#[test]
fn reach_counts_tries_probes_udp_sizes_and_shows_the_client() {
    let lab = lab_with_web("obr", &["--proxy-mode", "iptables"]);
    let pods: Vec<String> = web_pods(&lab).into_iter().map(|(n, _, _)| n).collect();

    // --count: every try of the UDP Service answered, by the web pods (their hostname).
    let cells = reach(&lab, &["--count", "6"]);
    let udp = cell(&cells, &format!("host/{A}"), "svc/default/web:81/udp");
    assert_eq!(udp["result"], "reached", "{udp:#}");
    assert_eq!(
        (
            udp["tries"]["total"].as_u64(),
            udp["tries"]["answered"].as_u64()
        ),
        (Some(6), Some(6))
    );
    let served = udp["tries"]["servedBy"].as_object().unwrap();
    assert!(
        served.keys().all(|p| pods.contains(p)),
        "{served:?} {pods:?}"
    );
    assert_eq!(served.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 6);
    // nginx logs the address it saw: from node B, B's overlay address.
    let nginx = cell(&cells, &format!("host/{B}"), "pod/default/nginx:80");
    assert_eq!(nginx["client"], overlay_address(&lab, B), "{nginx:#}");
    assert_eq!(nginx["tries"]["servedBy"]["nginx"], 6, "{nginx:#}");

    // --client-ip: through a NodePort the client's address is lost (masqueraded by node A).
    let cells = reach(&lab, &["--client-ip"]);
    let node_port = format!("nodeport/{A}/default/web:80");
    let via = cell(&cells, "host/client", &node_port);
    assert_eq!(via["result"], "reached", "{via:#}");
    let seen = via["client"].as_str().unwrap();
    assert!(
        seen.starts_with("172.16.2."),
        "the backend saw {seen}, not node A's address"
    );
    // Straight to a pod from a host, the host's own overlay address arrives.
    let (pod, _, node) = web_pods(&lab).remove(0);
    let direct = cell(
        &cells,
        &format!("host/{MASTER}"),
        &format!("pod/default/{pod}:8081/udp"),
    );
    let expected = if node == MASTER {
        "172.16.1.1".to_string()
    } else {
        overlay_address(&lab, MASTER)
    };
    assert_eq!(direct["client"], expected.as_str(), "{direct:#}");

    // --size: a datagram over the MTU is refused with DF set; one under it answers.
    let big = reach(&lab, &["--size", "3000"]);
    let c = cell(&big, &format!("host/{A}"), "svc/default/web:81/udp");
    assert_eq!(c["result"], "unreached", "{c:#}");
    assert!(
        c["why"].as_str().unwrap().contains("message too long"),
        "{c:#}"
    );
    let tcp = cell(&big, &format!("host/{A}"), "svc/default/web:80");
    assert_eq!(
        tcp["result"], "reached",
        "a 3000-byte request over TCP is segmented: {tcp:#}"
    );
    let small = reach(&lab, &["--size", "1000"]);
    assert_eq!(
        cell(&small, &format!("host/{A}"), "svc/default/web:81/udp")["result"],
        "reached"
    );
}

#[test]
fn reach_watch_shows_a_link_going_down() {
    let lab = lab_with_web("obw", &["--proxy-mode", "iptables"]);
    let mut watch = kemu()
        .args([
            "reach",
            &lab.name,
            "--watch",
            "--interval",
            "200ms",
            "--timeout",
            "500ms",
        ])
        .args(["-o", "json", "--no-probe-pods"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = rx.recv_timeout(LONG).expect("a first round");
    let target = format!("nodeport/{B}/default/web:80");
    let was = first["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "host/client" && c["target"] == target)
        .cloned()
        .expect("the first round lists every cell");
    assert_eq!(was["result"], "reached");
    run_kemu(&["link", &lab.name, B, "--down"]);
    let went = wait_for("a round showing B's NodePort unreached", LONG, || {
        let round = rx.recv_timeout(LONG).ok()?;
        round["changed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source"] == "host/client" && c["target"] == target)
            .cloned()
    });
    assert_eq!(went["result"], "unreached", "{went:#}");
    run_kemu(&["link", &lab.name, B, "--up"]);
    // Interrupted, it stops cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = watch.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Start `kemu capture ARGS...` and wait until its sockets listen.
fn start_capture(args: &[&str]) -> std::process::Child {
    let mut child = kemu()
        .arg("capture")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("capturing on"), "{line}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

/// The `if_name` of every Interface Description Block of a pcapng file.
fn interface_names(file: &[u8]) -> Vec<String> {
    kemu::observe::pcapng::blocks(file)
        .expect("a well-formed pcapng file")
        .iter()
        .filter(|b| b.kind == 1)
        .map(|b| {
            // link type, reserved, snap length; then options: code, length, value.
            let mut at = 8;
            while at + 4 <= b.body.len() {
                let code = u16::from_le_bytes([b.body[at], b.body[at + 1]]);
                let len = u16::from_le_bytes([b.body[at + 2], b.body[at + 3]]) as usize;
                if code == 2 {
                    return String::from_utf8_lossy(&b.body[at + 4..at + 4 + len]).into_owned();
                }
                at += 4 + len.next_multiple_of(4);
            }
            panic!("an interface without a name")
        })
        .collect()
}

fn tcpdump(file: &str) -> String {
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", file])
        .output()
        .expect("tcpdump (Debian package tcpdump, in ci/bootstrap.sh)");
    assert!(out.status.success(), "tcpdump -r {file}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn capture_holds_the_syn_to_the_service_and_the_dnated_one() {
    let lab = lab_with_web("obp", &["--proxy-mode", "iptables"]);
    let svc = lab.jsonpath("service/web", "{.spec.clusterIP}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.pcapng");
    let file = file.to_str().unwrap();
    let capture = start_capture(&[
        &lab.name,
        "pod/default/nginx",
        A,
        "-w",
        file,
        "--duration",
        "3s",
        "--port",
        "80",
        "--port",
        "8080",
        "--proto",
        "tcp",
    ]);
    // nginx runs on node A: from it to the Service, DNATed by A to a web pod.
    let out = kemu_out(&[
        "exec",
        &lab.name,
        "pod/default/nginx",
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "--local-port",
        "45123",
        &format!("http://{svc}/hostname"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let served = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let backend = web_pods(&lab)
        .into_iter()
        .find(|(n, _, _)| *n == served)
        .unwrap_or_else(|| panic!("{served} is not a web pod"));
    let out = capture.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let names = interface_names(&std::fs::read(file).unwrap());
    assert!(
        names.contains(&"pod/default/nginx:eth0".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with(&format!("{A}:veth"))),
        "{names:?}"
    );
    let dump = tcpdump(file);
    let nginx = lab.jsonpath("pod/nginx", "{.status.podIP}");
    let syn_to_service = format!("{nginx}.45123 > {svc}.80: Flags [S]");
    let syn_to_pod = format!("{nginx}.45123 > {}.8080: Flags [S]", backend.1);
    assert!(
        dump.contains(&syn_to_service),
        "no SYN to the Service:\n{dump}"
    );
    assert!(dump.contains(&syn_to_pod), "no DNATed SYN:\n{dump}");
    // In time order: the SYN to the Service comes first.
    let first = |needle: &str| dump.lines().position(|l| l.contains(needle)).unwrap();
    assert!(first(&syn_to_service) < first(&syn_to_pod), "{dump}");

    // To standard output, for `tcpdump -r -`, stopping after --count packets.
    let capture = start_capture(&[&lab.name, A, "-w", "-", "--count", "5", "--proto", "icmp"]);
    let ping = lab.exec("client", &["ping", "-c", "5", "-i", "0.2", A]);
    assert!(ping.status.success(), "{}", text(&ping));
    let out = capture.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut reader = std::process::Command::new("tcpdump")
        .args(["-nn", "-r", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut reader.stdin.take().unwrap(), &out.stdout).unwrap();
    let read = reader.wait_with_output().unwrap();
    assert!(read.status.success(), "tcpdump -r -: {}", text(&read));
    let dump = String::from_utf8_lossy(&read.stdout).into_owned();
    assert_eq!(dump.lines().count(), 5, "{dump}");
    assert!(dump.lines().all(|l| l.contains("ICMP echo")), "{dump}");
}

#[test]
fn trace_follows_a_clusterip_probe_rule_by_rule_and_leaves_no_rules() {
    let lab = lab_with_web("obt", &["--proxy-mode", "iptables"]);
    lab.kubectl_ok(&["create", "service", "clusterip", "empty", "--tcp=80:80"]);
    let svc = lab.jsonpath("service/web", "{.spec.clusterIP}");
    let empty = lab.jsonpath("service/empty", "{.spec.clusterIP}");
    let pod_ips: Vec<String> = web_pods(&lab).into_iter().map(|(_, ip, _)| ip).collect();
    // Every proxy has the empty Service's REJECT rule before the trace starts.
    for node in [MASTER, A, B] {
        wait_for(
            &format!("{node}'s rules for the empty Service"),
            LONG,
            || {
                let rules =
                    String::from_utf8(run_kemu(&["snapshot", &lab.name, node]).stdout).unwrap();
                rules.contains(&empty).then_some(())
            },
        );
    }
    let before = String::from_utf8(run_kemu(&["snapshot", &lab.name]).stdout).unwrap();

    let out = run_kemu(&[
        "trace",
        &lab.name,
        "--from",
        "pod/default/nginx",
        "--to",
        &format!("{svc}:80"),
    ]);
    let trace = String::from_utf8(out.stdout).unwrap();
    // Node A (where nginx runs) DNATs through the Service's chains to one endpoint.
    assert!(trace.contains(&format!("\nhost {A}\n")), "{trace}");
    assert!(trace.contains("ip nat KUBE-SERVICES:"), "{trace}");
    assert!(trace.contains("-> jump KUBE-SVC-"), "{trace}");
    let sep = trace
        .lines()
        .find(|l| l.trim_start().starts_with("ip nat KUBE-SEP-") && l.contains("dnat to "))
        .unwrap_or_else(|| panic!("no KUBE-SEP rule with a DNAT: {trace}"));
    let endpoint = sep
        .split("dnat to ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(
        pod_ips.iter().any(|ip| ip == endpoint),
        "{endpoint} is not a web pod: {trace}"
    );
    assert!(
        trace.contains(&format!("rewritten: dnat to {endpoint}:8080 on {A}")),
        "{trace}"
    );
    assert!(
        trace
            .trim_end()
            .ends_with("delivered: the probe was answered"),
        "{trace}"
    );

    // A Service without endpoints: kube-proxy's REJECT drops the probe on the source host.
    let out = run_kemu(&[
        "trace",
        &lab.name,
        "--from",
        B,
        "--to",
        &format!("{empty}:80"),
    ]);
    let trace = String::from_utf8(out.stdout).unwrap();
    assert!(
        trace.contains(&format!("dropped on {B} in ip filter KUBE-SERVICES")),
        "{trace}"
    );

    // The tracing tables are gone again: the rules are exactly as before.
    let after = String::from_utf8(run_kemu(&["snapshot", &lab.name]).stdout).unwrap();
    assert_eq!(before, after);
}
