//! NetworkPolicy enforcement end to end, as truth tables in the manner of the upstream e2e
//! suite (`test/e2e/network/netpol/`): namespaces x, y, z with pods a, b, c each (a and c on
//! the first node, b on the second), every pod serving TCP 80 and 81 (agnhost netexec); every
//! pod connects to every pod (and to a Service in front of x/a) after each policy change, and
//! the table of who reached whom is compared with what the policy allows. One lab per proxy
//! mode (iptables, nftables, userspace), the policies applied in sequence, the probes in
//! parallel. Tier 1 beside them: the differences the agent writes, applied in a private network
//! namespace, leave the same table as whole writes. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Lab, wait_for};
use kemu::netns::NetNs;

const TOPOLOGY: &str = "tests/fixtures/topologies/ok/netpol.yaml";
const NODES: [&str; 2] = ["192.168.0.201", "192.168.0.202"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// How long a connection attempt may take: a dropped SYN is a timeout.
const PROBE: Duration = Duration::from_millis(1500);
/// How long a policy change may take to show in the table.
const SETTLE: Duration = Duration::from_secs(15);
const LONG: Duration = Duration::from_secs(90);

/// Namespace and pod, e.g. `("x", "a")`.
type Name = (&'static str, &'static str);

fn names() -> Vec<Name> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (*ns, *p)))
        .collect()
}

fn setup_manifest() -> String {
    let mut yaml = String::new();
    for ns in NAMESPACES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n"
        ));
    }
    for (ns, pod) in names() {
        let node = if pod == "b" { NODES[1] } else { NODES[0] };
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: "{ns}", labels: {{pod: {pod}}}}}
spec:
  nodeName: "{node}"
  containers:
  - name: c80
    image: registry.k8s.io/e2e-test-images/agnhost:2.53
    args: [netexec, --http-port=80, --udp-port=-1]
    ports: [{{name: serve-80-tcp, containerPort: 80}}]
  - name: c81
    image: registry.k8s.io/e2e-test-images/agnhost:2.53
    args: [netexec, --http-port=81, --udp-port=-1]
    ports: [{{name: serve-81-tcp, containerPort: 81}}]
"#
        ));
    }
    yaml.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n\
         spec: {selector: {pod: a}, ports: [{port: 8080, targetPort: 80}]}\n",
    );
    yaml
}

/// The pods of the test: their network namespace and IP.
struct Pods {
    netns: BTreeMap<Name, String>,
    ips: BTreeMap<Name, String>,
    /// The ClusterIP of Service x/a, probed only where the proxy's rules hand service
    /// traffic on to the pod (not in userspace mode, where the node's proxy opens its own
    /// connection: the node's own traffic, which policies let through, as upstream's do).
    service: Option<String>,
}

fn pods(lab: &Lab, with_service: bool) -> Pods {
    let mut netns = BTreeMap::new();
    let mut ips = BTreeMap::new();
    for (ns, pod) in names() {
        let out = lab.kubectl_ok(&[
            "get",
            "pod",
            "-n",
            ns,
            pod,
            "-o",
            "jsonpath={.metadata.uid} {.status.podIP}",
        ]);
        let (uid, ip) = out.split_once(' ').unwrap();
        netns.insert(
            (ns, pod),
            kemu::kubelet::sandbox::pod_namespace(&lab.name, uid),
        );
        ips.insert((ns, pod), ip.to_string());
    }
    let service = lab.kubectl_ok(&[
        "get",
        "svc",
        "-n",
        "x",
        "a",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    Pods {
        netns,
        ips,
        service: with_service.then_some(service),
    }
}

/// A target column: a pod on a port, or Service x/a.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Pod(Name, u16),
    Service,
}

fn can_connect(netns: &str, addr: SocketAddr) -> bool {
    let ns = NetNs::open(netns).expect("open the pod's namespace");
    ns.run(move || Ok(TcpStream::connect_timeout(&addr, PROBE).is_ok()))
        .unwrap_or(false)
}

/// Who reaches what: every pod tries every target at once.
fn probe(pods: &Pods, port: u16) -> BTreeMap<(Name, Target), bool> {
    let mut targets: Vec<Target> = names().into_iter().map(|n| Target::Pod(n, port)).collect();
    if port == 80 && pods.service.is_some() {
        targets.push(Target::Service);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = names()
            .into_iter()
            .flat_map(|src| targets.iter().map(move |t| (src, *t)))
            .map(|(src, target)| {
                let addr: SocketAddr = match target {
                    Target::Pod(dst, port) => format!("{}:{port}", pods.ips[&dst]),
                    Target::Service => format!("{}:8080", pods.service.as_ref().unwrap()),
                }
                .parse()
                .unwrap();
                let netns = &pods.netns[&src];
                ((src, target), s.spawn(move || can_connect(netns, addr)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(key, h)| (key, h.join().unwrap()))
            .collect()
    })
}

/// The truth table as upstream prints it: `.` reached, `X` not.
fn table(cells: &BTreeMap<(Name, Target), bool>) -> String {
    let targets: Vec<Target> = {
        let mut t: Vec<Target> = cells.keys().map(|(_, t)| *t).collect();
        t.sort();
        t.dedup();
        t
    };
    let mut out = String::from("    ");
    for t in &targets {
        match t {
            Target::Pod((ns, p), _) => out.push_str(&format!(" {ns}/{p}")),
            Target::Service => out.push_str(" svc"),
        }
    }
    out.push('\n');
    for src in names() {
        out.push_str(&format!("{}/{} ", src.0, src.1));
        for t in &targets {
            out.push_str(if cells[&(src, *t)] { "   ." } else { "   X" });
        }
        out.push('\n');
    }
    out
}

/// Probe until the table is what `allowed` says (a pod always reaches itself, also through
/// the Service), or fail showing both.
fn expect(pods: &Pods, what: &str, port: u16, allowed: impl Fn(Name, Name) -> bool) {
    let deadline = Instant::now() + SETTLE;
    let want_of = |cells: &BTreeMap<(Name, Target), bool>| -> BTreeMap<(Name, Target), bool> {
        cells
            .keys()
            .map(|(src, t)| {
                let dst = match t {
                    Target::Pod(d, _) => *d,
                    Target::Service => ("x", "a"),
                };
                ((*src, *t), *src == dst || allowed(*src, dst))
            })
            .collect()
    };
    loop {
        let got = probe(pods, port);
        let want = want_of(&got);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (port {port}):\ngot:\n{}\nwant:\n{}",
            table(&got),
            table(&want)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn delete_policies(lab: &Lab) {
    for ns in NAMESPACES {
        lab.kubectl_ok(&["delete", "networkpolicy", "--all", "-n", ns]);
    }
}

/// The policy table of each node, as `nft list tables` names it.
fn has_policy_table(lab: &Lab, node: &str) -> bool {
    let out = lab.exec(node, &["nft", "list", "tables"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).contains("table inet kemu-netpol")
}

/// `kemu reach LAB --why SRC DST`.
fn reach_why(lab: &Lab, src: &str, dst: &str) -> String {
    let out = common::run_kemu(&["reach", &lab.name, "--why", src, dst]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scenario(mode: &str) {
    let lab = Lab::up(TOPOLOGY, "np", &["--proxy-mode", mode]);
    wait_for("both nodes Ready", LONG, || {
        let out = lab.kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ]);
        (out.lines().filter(|l| *l == "True").count() == 2).then_some(())
    });
    lab.apply(&setup_manifest());
    wait_for("9 pods Running", LONG, || {
        let out = lab.kubectl_ok(&[
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
        ]);
        (out.lines().filter(|l| *l == "Running").count() == 9).then_some(())
    });
    let pods = pods(&lab, mode != "userspace");
    let xa: Name = ("x", "a");

    expect(&pods, "no policy", 80, |_, _| true);
    expect(&pods, "no policy", 81, |_, _| true);
    assert!(NODES.iter().all(|n| !has_policy_table(&lab, n)));

    // Default deny ingress in x.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny-ingress, namespace: x}\nspec: {podSelector: {}}\n");
    expect(&pods, "deny ingress in x", 80, |_, d| d.0 != "x");
    // Both nodes run x pods, so both have the table; `kemu snapshot` shows it.
    assert!(NODES.iter().all(|n| has_policy_table(&lab, n)));
    let snapshot = common::run_kemu(&["snapshot", &lab.name, NODES[1]]);
    let snapshot = String::from_utf8_lossy(&snapshot.stdout);
    assert!(
        snapshot.contains("table inet kemu-netpol") && snapshot.contains("chain ingress/x/b"),
        "{snapshot}"
    );
    // Why: from the same model as the tables.
    let why = reach_why(&lab, "y/a", "x/b:80");
    assert!(
        why.starts_with("y/a (")
            && why.contains("tcp/80: denied")
            && why.contains("ingress of x/b: denied: isolated by x/deny-ingress"),
        "{why}"
    );
    if mode != "userspace" {
        let why = reach_why(&lab, "y/a", "svc/x/a:8080");
        assert!(
            why.starts_with("y/a (")
                && why.contains("-> Service x/a tcp/8080:\n  -> x/a (")
                && why.contains("tcp/80: denied")
                && why.contains("ingress of x/a: denied: isolated by x/deny-ingress"),
            "{why}"
        );
    }
    let why = reach_why(&lab, &format!("host/{}", NODES[0]), "x/a:80");
    assert!(
        why.contains("allowed: traffic from the pod's own node"),
        "{why}"
    );
    // The matrix notes what the policies decided: x/b (the pod source on the second node)
    // cannot reach x/a, and the note says why.
    let out = common::run_kemu(&["reach", &lab.name, "--timeout", "1s", "-o", "json"]);
    let matrix: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cell = matrix["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == format!("pod-on/{}", NODES[1]) && c["target"] == "pod/x/a:80")
        .expect("a cell from the second node's pod to x/a");
    assert_eq!(cell["result"], "unreached", "{cell}");
    assert_eq!(
        cell["policy"], "denied: ingress of x/a isolated by x/deny-ingress",
        "{cell}"
    );
    delete_policies(&lab);
    expect(
        &pods,
        "deny-ingress deleted: connections recover",
        80,
        |_, _| true,
    );

    // Default deny egress in x.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n");
    expect(&pods, "deny egress from x", 80, |s, _| s.0 != "x");
    delete_policies(&lab);

    // Allow x/a from pods b of its own namespace.
    let by_pod = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: allow, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";
    lab.apply(by_pod);
    expect(&pods, "x/a from x's b", 80, |s, d| {
        d != xa || s == ("x", "b")
    });
    // Updated in place: from pods c instead.
    lab.apply(&by_pod.replace("pod: b", "pod: c"));
    expect(&pods, "x/a from x's c (updated)", 80, |s, d| {
        d != xa || s == ("x", "c")
    });

    // From namespace y.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: allow, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n");
    expect(&pods, "x/a from namespace y", 80, |s, d| {
        d != xa || s.0 == "y"
    });

    // From pods b of namespace y (both selectors in one peer).
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: allow, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]}]\n");
    expect(&pods, "x/a from y's b", 80, |s, d| {
        d != xa || s == ("y", "b")
    });
    let why = reach_why(&lab, "y/b", "x/a:80");
    assert!(
        why.contains("tcp/80: allowed") && why.contains("allowed by x/allow ingress[0]"),
        "{why}"
    );
    assert!(reach_why(&lab, "y/c", "x/a:80").contains("tcp/80: denied"));

    // From the pod network except z/b.
    lab.apply(&format!(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: allow, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 172.16.0.0/16, except: [{}/32]}}}}]}}]\n",
        pods.ips[&("z", "b")]
    ));
    expect(&pods, "x/a from 172.16.0.0/16 except z/b", 80, |s, d| {
        d != xa || s != ("z", "b")
    });

    // A named port: x/a takes only serve-81-tcp.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: allow, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: serve-81-tcp}]}]\n");
    expect(&pods, "x/a on serve-81-tcp only", 80, |_, d| d != xa);
    expect(&pods, "x/a on serve-81-tcp only", 81, |_, _| true);

    // A port range: 81-90.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: allow, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81, endPort: 90}]}]\n");
    expect(&pods, "x/a on 81-90", 80, |_, d| d != xa);
    expect(&pods, "x/a on 81-90", 81, |_, _| true);

    // Egress by named port to namespace y only.
    lab.apply("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: egress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: serve-80-tcp}]}]\n");
    expect(
        &pods,
        "x/b out to y on serve-80-tcp, x/a on 81-90",
        80,
        |s, d| d != xa && (s != ("x", "b") || d.0 == "y"),
    );

    // The last policies deleted: everything recovers and the nodes' tables are gone.
    delete_policies(&lab);
    expect(&pods, "all policies deleted", 80, |_, _| true);
    expect(&pods, "all policies deleted", 81, |_, _| true);
    wait_for("the policy tables removed", SETTLE, || {
        NODES
            .iter()
            .all(|n| !has_policy_table(&lab, n))
            .then_some(())
    });
}

#[test]
fn truth_tables_with_the_iptables_proxy() {
    scenario("iptables");
}

#[test]
fn truth_tables_with_the_nftables_proxy() {
    scenario("nftables");
}

#[test]
fn truth_tables_with_the_userspace_proxy() {
    scenario("userspace");
}

/// The objects of the tier-1 test: pods of namespaces x and y on node n1 (and one on n2).
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {team: red}}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.244.1.3}
---
kind: Pod
metadata: {name: c, namespace: "y", labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.1.4}
---
kind: Pod
metadata: {name: d, namespace: "y", labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.2.2}
"#;

const DENY_X: &str = "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
const WEB: &str = "kind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}], ports: [{port: http}, {port: 5000, endPort: 5010}]}]\n";
const WEB2: &str = "kind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}], ports: [{port: 80, protocol: UDP}]}]\n  egress: [{to: [{podSelector: {}}], ports: [{port: http}]}]\n";
const ALL_Y: &str = "kind: NetworkPolicy\nmetadata: {name: all, namespace: \"y\"}\nspec: {podSelector: {}, ingress: [{}]}\n";

fn node_table(policies: &[&str]) -> kemu::netpol::nft::Table {
    let mut yaml = CLUSTER.to_string();
    for p in policies {
        yaml.push_str("---\n");
        yaml.push_str(p);
    }
    let objects = kemu::netpol::objects::parse_yaml(&yaml).unwrap();
    kemu::netpol::nft::table(&objects.model(Some("n1")), "n1")
}

/// `nft -f` each script in turn in a private network namespace; the ruleset after them.
fn nft_in_scratch(scripts: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut shell = String::new();
    for (i, script) in scripts.iter().enumerate() {
        let path = dir.path().join(format!("{i}.nft"));
        std::fs::write(&path, script).unwrap();
        shell.push_str(&format!("nft -f {} && ", path.display()));
    }
    shell.push_str("nft list ruleset");
    let out = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scripts.join("\n----\n")
    );
    // The order in which chains and sets were created is the listing's order.
    kemu::proxy::normalize::nft_ruleset(&String::from_utf8_lossy(&out.stdout))
}

/// Tier 1: every difference the agent writes, applied to the old table in the kernel, leaves
/// exactly what a whole write of the new table leaves.
#[test]
fn differences_leave_the_same_kernel_table_as_whole_writes() {
    use kemu::netpol::nft::{Table, transaction};
    let states: Vec<Table> = [
        vec![],
        vec![DENY_X],
        vec![DENY_X, WEB],
        vec![DENY_X, WEB2],
        vec![WEB2, ALL_Y],
        vec![DENY_X, WEB, ALL_Y],
        vec![],
        vec![WEB],
        vec![ALL_Y],
    ]
    .iter()
    .map(|p| node_table(p))
    .collect();
    for pair in states.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let patched = nft_in_scratch(&[transaction(None, old), transaction(Some(old), new)]);
        let whole = nft_in_scratch(&[transaction(None, new)]);
        assert_eq!(patched, whole, "from:\n{}\nto:\n{}", old.text(), new.text());
    }
    // A port edit rewrites its policy's chain alone; a peer edit adds a set and drops one.
    let tx = transaction(
        Some(&states[2]),
        &node_table(&[DENY_X, &WEB.replace("5010", "5020")]),
    );
    let lines: Vec<&str> = tx.lines().collect();
    assert_eq!(lines.len(), 2, "{tx}");
    assert_eq!(
        lines[0],
        "flush chain inet kemu-netpol policy/x/web/ingress"
    );
    assert!(
        lines[1].ends_with("tcp dport { 5000-5020, 8080 } accept comment \"x/web ingress[0]\""),
        "{tx}"
    );
    let tx = transaction(
        Some(&states[2]),
        &node_table(&[DENY_X, &WEB.replace("10.0.0.0/8", "10.0.0.0/9")]),
    );
    let verbs: Vec<&str> = tx
        .lines()
        .map(|l| l.split(" inet").next().unwrap())
        .collect();
    assert_eq!(
        verbs,
        ["add set", "flush chain", "add rule", "delete set"],
        "{tx}"
    );
}
