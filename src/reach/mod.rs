//! `kemu reach`: the reachability matrix of a lab. Every source (each host, one pod on each
//! cluster host, the outside clients) tries every target (each Service ClusterIP:port, each
//! node IP:NodePort, each pod IP:port); the result says whether the target answered and which
//! pod did.
//!
//! This module is pure: it names the sources and targets from the lab's objects ([`plan`]),
//! prints a matrix ([`render`]) and checks it against an expectation file ([`Expectations`]).
//! [`probe`] is the thin part that opens the connections inside the namespaces.
//!
//! Names are stable across runs of the same scenario (no generated pod names, no allocated
//! ClusterIPs or NodePorts), so that an expectation file can be written once:
//!
//! - sources: `host/<host>` for every host, `pod-on/<host>` for one pod on each cluster host;
//! - targets: `svc/<ns>/<service>:<port>`, `nodeport/<node>/<ns>/<service>:<port>` (the
//!   service port, not the allocated NodePort), `pod/<ns>/<pod>:<port>`.

pub mod probe;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Node, Pod, Service};

/// Where a probe starts: a host's namespace or a pod's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Stable name, e.g. `host/client` or `pod-on/192.168.0.202`.
    pub name: String,
    /// The network namespace to probe from.
    pub netns: String,
    /// The pod used, for `pod-on/` sources.
    pub pod: Option<String>,
}

/// What a probe connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Stable name, e.g. `svc/default/nginx-service-clusterip:8001` (UDP ports end in `/udp`).
    pub name: String,
    pub addr: SocketAddr,
    /// A UDP port: the probe is a datagram (agnhost's `hostname` request), not an HTTP GET.
    pub udp: bool,
}

/// The protocol of a port, if `reach` probes it: TCP or UDP (SCTP is not probed).
fn probed_protocol(protocol: Option<&str>) -> Option<bool> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(false),
        "UDP" => Some(true),
        _ => None,
    }
}

/// A target's name: UDP ports get a `/udp` suffix (TCP names stay as they always were).
fn target_name(name: String, udp: bool) -> String {
    if udp { format!("{name}/udp") } else { name }
}

/// How one probe ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    /// The target answered; `by` is the pod that served it when kemu could tell.
    Reached { by: Option<String> },
    /// No answer: why (`timeout`, `refused`, `reset`, `unreachable` ...).
    Unreached { why: String },
}

impl Outcome {
    pub fn reached(&self) -> bool {
        matches!(self, Outcome::Reached { .. })
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    pub source: String,
    pub target: String,
    pub addr: SocketAddr,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// With `--count N` (N > 1): how the tries went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<Tries>,
    /// The client address the backend saw (its `/clientip` answer, or nginx's access log),
    /// when kemu could tell; several, comma separated, if the tries differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// What NetworkPolicy makes of the cell when an isolated pod is at either end
    /// (`allowed by x/web ingress[0]`, `denied: ingress of x/a isolated by x/deny`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// The tries of one cell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tries {
    pub total: usize,
    pub answered: usize,
    /// Which pod answered how many tries (those kemu could tell).
    #[serde(
        rename = "servedBy",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub served_by: std::collections::BTreeMap<String, usize>,
}

/// How one try went: the pod that answered (if known), or why nothing did; and the client
/// address the backend saw, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Try {
    pub answer: Result<Option<String>, String>,
    pub client: Option<String>,
}

/// A cell's outcome from its tries: reached only when every try was answered (one failure
/// in four is a failure), served by the pod that answered them all if it was one pod.
pub fn summarise(tries: &[Try]) -> (Outcome, Option<Tries>, Option<String>) {
    let mut served_by = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for t in tries {
        match &t.answer {
            Ok(Some(pod)) => *served_by.entry(pod.clone()).or_insert(0) += 1,
            Ok(None) => {}
            Err(why) => failures.push(why.clone()),
        }
    }
    let answered = tries.len() - failures.len();
    let mut clients: Vec<String> = tries.iter().filter_map(|t| t.client.clone()).collect();
    clients.sort();
    clients.dedup();
    let client = (!clients.is_empty()).then(|| clients.join(","));
    let outcome = match failures.first() {
        None => Outcome::Reached {
            by: match (served_by.len(), served_by.values().next()) {
                (1, Some(n)) if *n == tries.len() => served_by.keys().next().cloned(),
                _ => None,
            },
        },
        Some(why) => Outcome::Unreached { why: why.clone() },
    };
    let summary = (tries.len() > 1).then_some(Tries {
        total: tries.len(),
        answered,
        served_by,
    });
    (outcome, summary, client)
}

/// A lab's host as `reach` needs it.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    pub netns: String,
    /// Whether pods run there (minion role).
    pub cluster: bool,
}

/// The sources and targets of a lab, in a stable order.
pub fn plan(
    hosts: &[HostInfo],
    nodes: &[Node],
    services: &[Service],
    pods: &[Pod],
    pod_netns: impl Fn(&Pod) -> String,
) -> (Vec<Source>, Vec<Target>) {
    let mut sources: Vec<Source> = hosts
        .iter()
        .map(|h| Source {
            name: format!("host/{}", h.name),
            netns: h.netns.clone(),
            pod: None,
        })
        .collect();
    let running: Vec<&Pod> = {
        let mut v: Vec<&Pod> = pods.iter().filter(|p| is_running(p)).collect();
        v.sort_by_key(|p| (namespace(*p), name(*p)));
        v
    };
    for host in hosts.iter().filter(|h| h.cluster) {
        // Host-network pods share the host's namespace: they would repeat `host/`.
        if let Some(pod) = running
            .iter()
            .find(|p| node_of(p) == host.name && !host_network(p))
        {
            sources.push(Source {
                name: format!("pod-on/{}", host.name),
                netns: pod_netns(pod),
                pod: Some(format!("{}/{}", namespace(*pod), name(*pod))),
            });
        }
    }

    let mut targets = Vec::new();
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| (namespace(*s), name(*s)));
    for svc in &services {
        let Some(spec) = &svc.spec else { continue };
        let svc_name = format!("{}/{}", namespace(*svc), name(*svc));
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        for port in spec.ports.iter().flatten() {
            let Some(udp) = probed_protocol(port.protocol.as_deref()) else {
                continue;
            };
            if let Some(ip) = cluster_ip {
                targets.push(Target {
                    name: target_name(format!("svc/{svc_name}:{}", port.port), udp),
                    addr: SocketAddr::new(ip, port.port as u16),
                    udp,
                });
            }
        }
    }
    let mut node_list: Vec<(&str, IpAddr)> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, internal_ip(n)?)))
        .collect();
    node_list.sort();
    for (node, ip) in &node_list {
        for svc in &services {
            let Some(spec) = &svc.spec else { continue };
            for port in spec.ports.iter().flatten() {
                let Some(node_port) = port.node_port else {
                    continue;
                };
                let Some(udp) = probed_protocol(port.protocol.as_deref()) else {
                    continue;
                };
                targets.push(Target {
                    name: target_name(
                        format!(
                            "nodeport/{node}/{}/{}:{}",
                            namespace(*svc),
                            name(*svc),
                            port.port
                        ),
                        udp,
                    ),
                    addr: SocketAddr::new(*ip, node_port as u16),
                    udp,
                });
            }
        }
    }
    for pod in &running {
        let Some(ip) = pod_ip(pod) else { continue };
        if host_network(pod) {
            continue;
        }
        let mut ports: Vec<(bool, i32)> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((probed_protocol(p.protocol.as_deref())?, p.container_port)))
            .collect();
        ports.sort();
        ports.dedup();
        for (udp, port) in ports {
            targets.push(Target {
                name: target_name(
                    format!("pod/{}/{}:{port}", namespace(*pod), name(*pod)),
                    udp,
                ),
                addr: SocketAddr::new(ip, port as u16),
                udp,
            });
        }
    }
    (sources, targets)
}

/// The cluster hosts where no pod runs that could be a `pod-on/` source: `reach` starts a
/// probe pod there so that every node has one.
pub fn hosts_without_pod<'a>(hosts: &'a [HostInfo], pods: &[Pod]) -> Vec<&'a HostInfo> {
    hosts
        .iter()
        .filter(|h| h.cluster)
        .filter(|h| {
            !pods
                .iter()
                .any(|p| is_running(p) && !host_network(p) && node_of(p) == h.name)
        })
        .collect()
}

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

fn namespace<K: kube::Resource>(o: &K) -> String {
    o.meta().namespace.clone().unwrap_or_default()
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn host_network(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

fn is_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_ip(p: &Pod) -> Option<IpAddr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn internal_ip(n: &Node) -> Option<IpAddr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// The matrix as a table, one line per (source, target).
pub fn render(cells: &[Cell]) -> String {
    let width = |f: fn(&Cell) -> usize, min: usize| cells.iter().map(f).max().unwrap_or(0).max(min);
    let ws = width(|c| c.source.len(), 6);
    let wt = width(|c| c.target.len(), 6);
    let wa = width(|c| c.addr.to_string().len(), 7);
    let mut out = format!(
        "{:ws$}  {:wt$}  {:wa$}  RESULT\n",
        "SOURCE", "TARGET", "ADDRESS"
    );
    for c in cells {
        let mut result = match (&c.outcome, &c.tries) {
            (Outcome::Reached { .. }, Some(t)) => format!("reached  {}/{}", t.answered, t.total),
            (Outcome::Unreached { why }, Some(t)) => {
                format!("-        {}/{} {why}", t.answered, t.total)
            }
            (Outcome::Reached { by: Some(pod) }, None) => format!("reached  {pod}"),
            (Outcome::Reached { by: None }, None) => "reached".to_string(),
            (Outcome::Unreached { why }, None) => format!("-        {why}"),
        };
        if let Some(t) = &c.tries {
            for (pod, n) in &t.served_by {
                let _ = write!(result, " {pod}×{n}");
            }
        }
        if let Some(client) = &c.client {
            let _ = write!(result, " (client {client})");
        }
        let result = match &c.policy {
            Some(policy) => format!("{result}  ({policy})"),
            None => result,
        };
        let _ = writeln!(
            out,
            "{:ws$}  {:wt$}  {:wa$}  {result}",
            c.source,
            c.target,
            c.addr.to_string()
        );
    }
    let reached = cells.iter().filter(|c| c.outcome.reached()).count();
    let _ = writeln!(out, "{reached} of {} reached", cells.len());
    out
}

/// One line of an expectation file: `SOURCE-GLOB TARGET-GLOB reached|unreached`.
#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    source: glob::Pattern,
    target: glob::Pattern,
    reached: bool,
}

/// What a lab's matrix should be: rules matched by glob, the last matching rule wins, and
/// every cell of the matrix must be matched by some rule.
///
/// ```text
/// # every source reaches every target ...
/// *              *        reached
/// # ... except that ClusterIPs mean nothing outside the cluster
/// host/client    svc/*    unreached
/// ```
#[derive(Debug, Clone)]
pub struct Expectations {
    file: String,
    rules: Vec<Rule>,
}

impl Expectations {
    /// Parse `text` (read from `file`, named in errors).
    pub fn parse(file: &str, text: &str) -> anyhow::Result<Expectations> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [source, target, result] = fields[..] else {
                anyhow::bail!(
                    "{file}:{}: expected `SOURCE TARGET reached|unreached`, found {line:?}",
                    i + 1
                );
            };
            let pattern = |p: &str, what: &str| {
                glob::Pattern::new(p)
                    .map_err(|e| anyhow::anyhow!("{file}:{}: {what} pattern {p:?}: {e}", i + 1))
            };
            let reached = match result {
                "reached" => true,
                "unreached" => false,
                other => anyhow::bail!(
                    "{file}:{}: result must be `reached` or `unreached`, found {other:?}",
                    i + 1
                ),
            };
            rules.push(Rule {
                line: i + 1,
                source: pattern(source, "source")?,
                target: pattern(target, "target")?,
                reached,
            });
        }
        Ok(Expectations {
            file: file.to_string(),
            rules,
        })
    }

    /// The differences between `cells` and the expectations, one line each (empty when the
    /// matrix is as expected).
    pub fn differences(&self, cells: &[Cell]) -> Vec<String> {
        let mut out = Vec::new();
        for c in cells {
            let rule = self
                .rules
                .iter()
                .rev()
                .find(|r| r.source.matches(&c.source) && r.target.matches(&c.target));
            let got = if c.outcome.reached() {
                "reached"
            } else {
                "unreached"
            };
            match rule {
                None => out.push(format!(
                    "{} -> {} ({}): {got}, but no line of {} covers it",
                    c.source, c.target, c.addr, self.file
                )),
                Some(r) if r.reached != c.outcome.reached() => {
                    let want = if r.reached { "reached" } else { "unreached" };
                    let mut detail = match &c.outcome {
                        Outcome::Unreached { why } => format!(" ({why})"),
                        Outcome::Reached { by: Some(p) } => format!(" (by {p})"),
                        Outcome::Reached { by: None } => String::new(),
                    };
                    if let Some(policy) = &c.policy {
                        detail.push_str(&format!(" [{policy}]"));
                    }
                    out.push(format!(
                        "{} -> {} ({}): expected {want} ({}:{}), got {got}{detail}",
                        c.source, c.target, c.addr, self.file, r.line
                    ));
                }
                Some(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hosts() -> Vec<HostInfo> {
        let h = |name: &str, cluster| HostInfo {
            name: name.into(),
            netns: format!("kemu-seed-{name}"),
            cluster,
        };
        vec![
            h("192.168.0.201", true),
            h("192.168.0.202", true),
            h("client", false),
        ]
    }

    fn objects() -> (Vec<Node>, Vec<Service>, Vec<Pod>) {
        let node = |name: &str| {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": name}]}
            }))
            .unwrap()
        };
        let svc = |name: &str, ip: &str, port: i32, node_port: Option<i32>| {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": port, "nodePort": node_port}]}
            }))
            .unwrap()
        };
        let pod = |name: &str, node: &str, ip: &str, phase: &str| {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"nodeName": node, "containers": [
                    {"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}]},
                "status": {"phase": phase, "podIP": ip}
            }))
            .unwrap()
        };
        (
            vec![node("192.168.0.202"), node("192.168.0.201")],
            vec![
                svc("nginx-service-nodeport", "192.168.3.30", 8000, Some(30014)),
                svc("nginx-service-clusterip", "192.168.3.236", 8001, None),
                svc("headless", "None", 80, None),
            ],
            vec![
                pod("nginx-b", "192.168.0.202", "172.16.2.2", "Running"),
                pod("nginx-a", "192.168.0.201", "172.16.1.2", "Running"),
                pod("pending", "192.168.0.202", "172.16.2.3", "Pending"),
            ],
        )
    }

    #[test]
    fn plan_names_sources_and_targets_stably() {
        let (nodes, services, pods) = objects();
        let (sources, targets) = plan(&hosts(), &nodes, &services, &pods, |p| {
            format!("pod-ns-{}", p.metadata.uid.as_deref().unwrap())
        });
        let mut out = String::new();
        for s in &sources {
            let _ = writeln!(out, "source {} in {} ({:?})", s.name, s.netns, s.pod);
        }
        for t in &targets {
            let _ = writeln!(out, "target {} at {}", t.name, t.addr);
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn probe_pods_go_where_no_pod_runs() {
        let (_, _, pods) = objects();
        let hosts = hosts();
        let names: Vec<&str> = hosts_without_pod(&hosts, &pods[1..2])
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        // nginx-a runs on .201; the client is not a cluster host.
        assert_eq!(names, ["192.168.0.202"]);
        assert!(hosts_without_pod(&hosts, &pods).is_empty());
    }

    fn cell(source: &str, target: &str, reached: bool) -> Cell {
        Cell {
            policy: None,
            source: source.into(),
            target: target.into(),
            addr: "192.168.3.236:8001".parse().unwrap(),
            outcome: if reached {
                Outcome::Reached {
                    by: Some("default/nginx-a".into()),
                }
            } else {
                Outcome::Unreached {
                    why: "timeout".into(),
                }
            },
            tries: None,
            client: None,
        }
    }

    #[test]
    fn expectations_last_matching_rule_wins_and_every_cell_needs_a_rule() {
        let expect = Expectations::parse(
            "expect.txt",
            "# all reach\n*  *  reached\nhost/client svc/* unreached # not routed\n",
        )
        .unwrap();
        let cells = [
            cell("host/client", "svc/default/a:80", false),
            cell("host/client", "pod/default/x:80", false),
            cell("pod-on/n1", "svc/default/a:80", true),
        ];
        assert_eq!(
            expect.differences(&cells),
            [
                "host/client -> pod/default/x:80 (192.168.3.236:8001): expected reached (expect.txt:2), got unreached (timeout)"
            ]
        );
        let partial = Expectations::parse("e", "pod-on/* * reached").unwrap();
        assert_eq!(
            partial.differences(&cells[..1]),
            [
                "host/client -> svc/default/a:80 (192.168.3.236:8001): unreached, but no line of e covers it"
            ]
        );
    }

    #[test]
    fn bad_expectation_lines_name_file_and_line() {
        let err = Expectations::parse("e.txt", "* *\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "e.txt:1: expected `SOURCE TARGET reached|unreached`, found \"* *\""
        );
        let err = Expectations::parse("e.txt", "\n* * maybe\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "e.txt:2: result must be `reached` or `unreached`, found \"maybe\""
        );
    }

    #[test]
    fn tries_are_summarised_all_or_nothing() {
        let ok = |pod: &str, client: &str| Try {
            answer: Ok(Some(pod.to_string())),
            client: Some(client.to_string()),
        };
        let lost = Try {
            answer: Err("timeout".into()),
            client: None,
        };
        let (outcome, tries, client) = summarise(&[ok("a", "172.16.1.0"), ok("a", "172.16.1.0")]);
        assert_eq!(
            outcome,
            Outcome::Reached {
                by: Some("a".into())
            }
        );
        assert_eq!(tries.as_ref().map(|t| (t.total, t.answered)), Some((2, 2)));
        assert_eq!(client.as_deref(), Some("172.16.1.0"));
        let (outcome, tries, _) = summarise(&[
            ok("a", "172.16.1.0"),
            ok("b", "172.16.2.0"),
            lost.clone(),
            ok("a", "172.16.1.0"),
        ]);
        assert_eq!(
            outcome,
            Outcome::Unreached {
                why: "timeout".into()
            }
        );
        let tries = tries.unwrap();
        assert_eq!((tries.total, tries.answered), (4, 3));
        assert_eq!(
            tries.served_by,
            [("a".to_string(), 2), ("b".to_string(), 1)].into()
        );
        // One try: no summary, as before --count existed.
        let (outcome, tries, client) = summarise(&[lost]);
        assert!(!outcome.reached() && tries.is_none() && client.is_none());
        let mut cells = vec![cell("pod-on/n1", "svc/default/a:80", true)];
        cells[0].outcome = Outcome::Reached { by: None };
        cells[0].tries = Some(Tries {
            total: 4,
            answered: 4,
            served_by: [("a".to_string(), 3), ("b".to_string(), 1)].into(),
        });
        cells[0].client = Some("172.16.1.0".into());
        assert!(
            render(&cells).contains("reached  4/4 a×3 b×1 (client 172.16.1.0)"),
            "{}",
            render(&cells)
        );
    }

    #[test]
    fn udp_ports_are_targets_with_a_suffix() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "192.168.3.10", "ports": [
                {"port": 53, "protocol": "UDP", "nodePort": 30053},
                {"port": 53, "protocol": "TCP"},
                {"port": 9, "protocol": "SCTP"}]}
        }))
        .unwrap();
        let (nodes, _, _) = objects();
        let (_, targets) = plan(&hosts(), &nodes[..1], &[svc], &[], |_| String::new());
        let names: Vec<(&str, bool)> = targets.iter().map(|t| (t.name.as_str(), t.udp)).collect();
        assert_eq!(
            names,
            [
                ("svc/kube-system/dns:53/udp", true),
                ("svc/kube-system/dns:53", false),
                ("nodeport/192.168.0.202/kube-system/dns:53/udp", true)
            ]
        );
    }

    #[test]
    fn render_is_a_table_with_a_total() {
        let cells = [
            cell("host/client", "svc/default/a:8001", false),
            cell("pod-on/192.168.0.201", "svc/default/a:8001", true),
        ];
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(render(&cells)));
    }
}
