//! NetworkPolicy semantics as data: which pods are isolated, in which direction, and what each
//! rule of each policy selecting them allows. One model feeds both the nftables renderer
//! ([`super::nft`]) and `kemu reach --why` ([`Model::evaluate`]), so the rules in the kernel and
//! the explanation cannot disagree.
//!
//! The semantics are those of the API documentation and of kube-network-policies
//! (`pkg/networkpolicy/networkpolicy.go`):
//! - a pod is isolated for ingress (egress) when a policy of its namespace selects it and lists
//!   that direction in `policyTypes` (defaulted as the API server does: Ingress, plus Egress
//!   when there are egress rules); traffic is then allowed when any rule of any such policy
//!   matches, and dropped otherwise;
//! - a peer's `podSelector` alone selects pods of the policy's namespace, `namespaceSelector`
//!   alone every pod of the selected namespaces, both together the selected pods of the
//!   selected namespaces; `ipBlock` matches addresses (pods' too), minus `except`;
//! - a port by number, with `endPort` a range, by name the container port of that name and
//!   protocol of the destination pod (for ingress the isolated pod itself, for egress the pod
//!   the traffic goes to); no port: every port of the protocol; no `ports`: everything.
//!
//! Host-network pods are neither isolated nor peers (their address is the node's), nor are
//! pods without an IPv4 address or that have terminated. Only IPv4 is modelled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::addrs::AddrSet;
use crate::controllers::util::Selector;

/// The label every namespace carries with its own name (set by the API server since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Traffic into a pod or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The `policyTypes` value.
    fn policy_type(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport protocols a policy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's spelling (`TCP`, ...); `None` for anything else.
    pub fn from_api(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' spelling (`tcp`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Destination ports `first..=last` of a protocol (`0..=65535`: all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn all(protocol: Protocol) -> PortRange {
        PortRange {
            protocol,
            first: 0,
            last: u16::MAX,
        }
    }

    pub fn is_all(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }

    fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.first..=self.last).contains(&port)
    }
}

/// Which rule of which policy: `ns/name ingress[0]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// `namespace/name` of the policy.
    pub policy: String,
    pub direction: Direction,
    /// The rule's index in `spec.ingress` / `spec.egress`.
    pub index: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// What one rule of a policy allows for one isolated pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub origin: Origin,
    /// The peer addresses (sources for ingress, destinations for egress), by the name of the
    /// policy rule's set in [`Model::peer_sets`]; `None`: any address.
    pub peers: Option<String>,
    /// The ports; `None`: every port and protocol.
    pub ports: Option<Vec<PortRange>>,
    /// Egress ports by name, resolved per destination pod: (pod IP, protocol, port). Only
    /// pods among the peers are listed, so these need no peer match of their own.
    pub pinned: Vec<(Ipv4Addr, Protocol, u16)>,
}

impl Rule {
    /// Whether the rule allows traffic with the peer `peer` on `protocol`/`port`.
    fn allows(&self, model: &Model, peer: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        if self.pinned.contains(&(peer, protocol, port)) {
            return true;
        }
        let peer_ok = match &self.peers {
            None => true,
            Some(set) => model.peer_sets.get(set).is_some_and(|s| s.contains(peer)),
        };
        let port_ok = match &self.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| p.contains(protocol, port)),
        };
        peer_ok && port_ok
    }
}

/// The policies that isolate a pod in one direction and the rules that let traffic through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Isolation {
    /// `namespace/name` of every policy that selects the pod for this direction.
    pub policies: Vec<String>,
    pub rules: Vec<Rule>,
}

/// An isolated pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedPod {
    /// `namespace/name`.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub ingress: Option<Isolation>,
    pub egress: Option<Isolation>,
}

impl IsolatedPod {
    pub fn isolation(&self, direction: Direction) -> Option<&Isolation> {
        match direction {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
}

/// The NetworkPolicy state of a node (or of the whole cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// The pods that at least one policy isolates, by `namespace/name`.
    pub pods: Vec<IsolatedPod>,
    /// Peer addresses of each policy rule with peers, by set name (see [`set_name`]).
    pub peer_sets: BTreeMap<String, AddrSet>,
    /// Every pod the model knows (isolated or not): IP → `namespace/name`.
    pub pod_names: BTreeMap<Ipv4Addr, String>,
}

/// The name of the set of a policy rule's peers, after the rule's field:
/// `from/<ns>/<policy>/<i>` (ingress) or `to/<ns>/<policy>/<i>` (egress).
pub fn set_name(origin: &Origin) -> String {
    let field = match origin.direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    format!("{field}/{}/{}", origin.policy, origin.index)
}

/// A packet (the first of a connection) to decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

/// What one direction's policies make of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pod is not isolated in this direction (or the address is no pod's).
    NotIsolated,
    /// Allowed by this rule (the first that matches, in policy order).
    Allowed(Origin),
    /// The pod is isolated by these policies and none of their rules matches.
    Denied { policies: Vec<String> },
    /// A pod's traffic to itself is always allowed.
    SelfTraffic,
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotIsolated => f.write_str("not isolated: allowed"),
            Decision::Allowed(origin) => write!(f, "allowed by {origin}"),
            Decision::Denied { policies } => write!(
                f,
                "denied: isolated by {} and no rule matches",
                policies.join(", ")
            ),
            Decision::SelfTraffic => f.write_str("allowed: a pod's traffic to itself"),
        }
    }
}

/// The verdict on a packet: egress at its source pod, ingress at its destination pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The source pod (`namespace/name`), if the source is a pod.
    pub src_pod: Option<String>,
    pub dst_pod: Option<String>,
    pub egress: Decision,
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    /// What the policies did, in a few words for a matrix cell (`denied: ingress of x/a
    /// isolated by x/deny`, `allowed by x/web ingress[0]`); `None` when neither end is an
    /// isolated pod.
    pub fn note(&self) -> Option<String> {
        let side = |d: &Decision, dir: Direction, pod: &Option<String>| match d {
            Decision::Denied { policies } => Some(Err(format!(
                "{dir} of {} isolated by {}",
                pod.as_deref().unwrap_or("?"),
                policies.join(", ")
            ))),
            Decision::Allowed(origin) => Some(Ok(origin.to_string())),
            Decision::NotIsolated | Decision::SelfTraffic => None,
        };
        let sides: Vec<Result<String, String>> = [
            side(&self.egress, Direction::Egress, &self.src_pod),
            side(&self.ingress, Direction::Ingress, &self.dst_pod),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sides.is_empty() {
            return None;
        }
        let denied: Vec<&str> = sides
            .iter()
            .filter_map(|s| s.as_ref().err())
            .map(String::as_str)
            .collect();
        if !denied.is_empty() {
            return Some(format!("denied: {}", denied.join("; ")));
        }
        let allowed: Vec<&str> = sides
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .map(String::as_str)
            .collect();
        Some(format!("allowed by {}", allowed.join(" and ")))
    }
}

impl Model {
    /// Decide on a packet as the rules of the nodes of its source and destination pods do.
    pub fn evaluate(&self, packet: Packet) -> Verdict {
        let src_pod = self.pod_names.get(&packet.src).cloned();
        let dst_pod = self.pod_names.get(&packet.dst).cloned();
        if packet.src == packet.dst && src_pod.is_some() {
            return Verdict {
                src_pod,
                dst_pod,
                egress: Decision::SelfTraffic,
                ingress: Decision::SelfTraffic,
            };
        }
        let decide = |direction: Direction, pod_ip: Ipv4Addr, peer: Ipv4Addr| {
            let Some(isolation) = self
                .pods
                .iter()
                .find(|p| p.ip == pod_ip)
                .and_then(|p| p.isolation(direction))
            else {
                return Decision::NotIsolated;
            };
            match isolation
                .rules
                .iter()
                .find(|r| r.allows(self, peer, packet.protocol, packet.port))
            {
                Some(rule) => Decision::Allowed(rule.origin.clone()),
                None => Decision::Denied {
                    policies: isolation.policies.clone(),
                },
            }
        };
        Verdict {
            egress: decide(Direction::Egress, packet.src, packet.dst),
            ingress: decide(Direction::Ingress, packet.dst, packet.src),
            src_pod,
            dst_pod,
        }
    }

    /// The isolated pods of `node`.
    pub fn on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a IsolatedPod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }
}

/// A pod as policies see it.
struct PodView<'a> {
    key: String,
    namespace: &'a str,
    ip: Ipv4Addr,
    node: &'a str,
    pod: &'a Pod,
}

/// The pods that take part in policies: an IPv4 address of their own, not terminated.
fn pod_views<'a>(pods: &[&'a Pod]) -> Vec<PodView<'a>> {
    let mut out: Vec<PodView<'a>> = pods
        .iter()
        .filter_map(|pod| {
            let spec = pod.spec.as_ref()?;
            if spec.host_network == Some(true) || crate::controllers::util::is_terminated(pod) {
                return None;
            }
            let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            Some(PodView {
                key: format!("{namespace}/{name}"),
                namespace,
                ip,
                node: spec.node_name.as_deref().unwrap_or_default(),
                pod,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The container port named `name` with `protocol` of `pod`.
fn named_port(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP")) == Some(protocol)
        })
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// One entry of a rule's `ports`, before named ports are resolved.
enum PortSpec {
    Range(PortRange),
    Named(String, Protocol),
}

fn port_specs(ports: &[NetworkPolicyPort]) -> Vec<PortSpec> {
    ports
        .iter()
        .filter_map(|p| {
            let protocol = Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?;
            Some(match &p.port {
                None => PortSpec::Range(PortRange::all(protocol)),
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    // A number in a string is a number (intstr's IntValue).
                    Ok(port) => PortSpec::Range(PortRange {
                        protocol,
                        first: port,
                        last: port,
                    }),
                    Err(_) => PortSpec::Named(name.clone(), protocol),
                },
                Some(IntOrString::Int(port)) => {
                    let first = u16::try_from(*port).ok()?;
                    let last = p
                        .end_port
                        .and_then(|e| u16::try_from(e).ok())
                        .unwrap_or(first)
                        .max(first);
                    PortSpec::Range(PortRange {
                        protocol,
                        first,
                        last,
                    })
                }
            })
        })
        .collect()
}

/// The inputs of the model: every object the agent watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct Objects<'a> {
    pub pods: &'a [&'a Pod],
    pub namespaces: &'a [&'a Namespace],
    pub policies: &'a [&'a NetworkPolicy],
}

/// A policy rule's peers, as stored in the API.
struct RuleSpec<'a> {
    peers: Option<&'a [NetworkPolicyPeer]>,
    ports: Option<&'a [NetworkPolicyPort]>,
}

/// `policyTypes` as the API server defaults them.
fn policy_directions(policy: &NetworkPolicy) -> BTreeSet<Direction> {
    let spec = policy.spec.as_ref();
    let listed: BTreeSet<Direction> = spec
        .and_then(|s| s.policy_types.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .find(|d| d.policy_type() == t)
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    let mut dirs = BTreeSet::from([Direction::Ingress]);
    if spec
        .and_then(|s| s.egress.as_ref())
        .is_some_and(|e| !e.is_empty())
    {
        dirs.insert(Direction::Egress);
    }
    dirs
}

fn rule_specs(policy: &NetworkPolicy, direction: Direction) -> Vec<RuleSpec<'_>> {
    let Some(spec) = policy.spec.as_ref() else {
        return Vec::new();
    };
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| RuleSpec {
                peers: r.from.as_deref().filter(|p| !p.is_empty()),
                ports: r.ports.as_deref().filter(|p| !p.is_empty()),
            })
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| RuleSpec {
                peers: r.to.as_deref().filter(|p| !p.is_empty()),
                ports: r.ports.as_deref().filter(|p| !p.is_empty()),
            })
            .collect(),
    }
}

/// Build the model of the pods on `node` (every node's with `None`).
pub fn build(objects: Objects<'_>, node: Option<&str>) -> Model {
    let pods = pod_views(objects.pods);
    // Namespace labels, with the name label the API server adds; namespaces known only from
    // their pods have that label alone.
    let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for ns in objects.namespaces {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        ns_labels.insert(name, labels);
    }
    for pod in &pods {
        ns_labels
            .entry(pod.namespace.to_string())
            .or_insert_with(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.to_string())])
            });
    }

    let mut policies: Vec<&NetworkPolicy> = objects.policies.to_vec();
    let key = |p: &NetworkPolicy| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name.as_deref().unwrap_or_default()
        )
    };
    policies.sort_by_key(|p| key(p));

    let mut model = Model {
        pod_names: pods.iter().map(|p| (p.ip, p.key.clone())).collect(),
        ..Model::default()
    };
    // Isolation per pod key, in pod order.
    let mut isolated: BTreeMap<&str, (usize, Option<Isolation>, Option<Isolation>)> =
        BTreeMap::new();

    for policy in policies {
        let policy_key = key(policy);
        let policy_ns = policy.metadata.namespace.as_deref().unwrap_or("default");
        let selector = policy
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .map(Selector::from_label_selector)
            .unwrap_or_default();
        let targets: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.namespace == policy_ns
                    && node.is_none_or(|n| p.node == n)
                    && selector.matches(p.pod.metadata.labels.as_ref())
            })
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            continue;
        }
        for direction in policy_directions(policy) {
            let specs = rule_specs(policy, direction);
            // What each rule allows apart from named ports, the same for every target.
            let mut shared: Vec<(Origin, Option<AddrSet>, Vec<PortSpec>)> = Vec::new();
            for (index, rule) in specs.iter().enumerate() {
                let origin = Origin {
                    policy: policy_key.clone(),
                    direction,
                    index,
                };
                let peers = rule
                    .peers
                    .map(|peers| peer_addrs(peers, policy_ns, &pods, &ns_labels));
                let ports = rule.ports.map(port_specs).unwrap_or_default();
                if let Some(set) = &peers {
                    model.peer_sets.insert(set_name(&origin), set.clone());
                }
                shared.push((origin, peers, ports));
            }
            for &t in &targets {
                let target = &pods[t];
                let entry = isolated.entry(&target.key).or_insert((t, None, None));
                let isolation = match direction {
                    Direction::Ingress => &mut entry.1,
                    Direction::Egress => &mut entry.2,
                };
                let isolation = isolation.get_or_insert_with(Isolation::default);
                isolation.policies.push(policy_key.clone());
                for (origin, peers, ports) in &shared {
                    isolation.rules.push(resolve_rule(
                        origin,
                        peers.as_ref(),
                        ports,
                        specs[origin.index].ports.is_some(),
                        target.pod,
                        &pods,
                    ));
                }
            }
        }
    }
    for (_, (i, ingress, egress)) in isolated {
        let pod = &pods[i];
        model.pods.push(IsolatedPod {
            pod: pod.key.clone(),
            ip: pod.ip,
            node: pod.node.to_string(),
            ingress,
            egress,
        });
    }
    model
}

/// A rule for one isolated pod: named ports resolved against it (ingress) or against the
/// destination pods among the peers (egress).
fn resolve_rule(
    origin: &Origin,
    peers: Option<&AddrSet>,
    ports: &[PortSpec],
    has_ports: bool,
    target: &Pod,
    pods: &[PodView<'_>],
) -> Rule {
    let mut ranges = Vec::new();
    let mut pinned = Vec::new();
    for spec in ports {
        match spec {
            PortSpec::Range(r) => ranges.push(*r),
            PortSpec::Named(name, protocol) => match origin.direction {
                Direction::Ingress => {
                    if let Some(port) = named_port(target, name, *protocol) {
                        ranges.push(PortRange {
                            protocol: *protocol,
                            first: port,
                            last: port,
                        });
                    }
                }
                Direction::Egress => {
                    for pod in pods {
                        if peers.is_some_and(|s| !s.contains(pod.ip)) {
                            continue;
                        }
                        if let Some(port) = named_port(pod.pod, name, *protocol) {
                            pinned.push((pod.ip, *protocol, port));
                        }
                    }
                }
            },
        }
    }
    ranges.sort();
    ranges.dedup();
    pinned.sort();
    pinned.dedup();
    Rule {
        origin: origin.clone(),
        peers: peers.map(|_| set_name(origin)),
        ports: has_ports.then_some(ranges),
        pinned,
    }
}

/// The addresses of a rule's peers.
fn peer_addrs(
    peers: &[NetworkPolicyPeer],
    policy_ns: &str,
    pods: &[PodView<'_>],
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> AddrSet {
    let mut set = AddrSet::default();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            // IPv6 blocks select nothing in this IPv4 model; the API validated the CIDRs.
            if let Ok(net) = block.cidr.parse::<Ipv4Net>() {
                let mut addrs = AddrSet::net(net.trunc());
                for except in block.except.iter().flatten() {
                    if let Ok(cut) = except.parse::<Ipv4Net>() {
                        addrs.subtract(&AddrSet::net(cut.trunc()));
                    }
                }
                set.union(&addrs);
            }
            continue;
        }
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            continue;
        }
        let namespaces: BTreeSet<&str> = match &peer.namespace_selector {
            None => BTreeSet::from([policy_ns]),
            Some(sel) => {
                let sel = Selector::from_label_selector(sel);
                ns_labels
                    .iter()
                    .filter(|(_, labels)| sel.matches(Some(labels)))
                    .map(|(name, _)| name.as_str())
                    .collect()
            }
        };
        let pod_sel = peer
            .pod_selector
            .as_ref()
            .map(Selector::from_label_selector);
        let ips: AddrSet = pods
            .iter()
            .filter(|p| namespaces.contains(p.namespace))
            .filter(|p| {
                pod_sel
                    .as_ref()
                    .is_none_or(|s| s.matches(p.pod.metadata.labels.as_ref()))
            })
            .map(|p| p.ip)
            .collect();
        set.union(&ips);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::fixture::{self, ip};

    const PODS: [(&str, &str); 9] = [
        ("x", "a"),
        ("x", "b"),
        ("x", "c"),
        ("y", "a"),
        ("y", "b"),
        ("y", "c"),
        ("z", "a"),
        ("z", "b"),
        ("z", "c"),
    ];

    type Pod = (&'static str, &'static str);

    /// The 9×9 truth table of `protocol`/`port` (rows: sources, columns: destinations).
    fn table(model: &Model, protocol: Protocol, port: u16) -> String {
        table_of(|s, d| {
            model
                .evaluate(Packet {
                    src: ip(s.0, s.1),
                    dst: ip(d.0, d.1),
                    protocol,
                    port,
                })
                .allowed()
        })
    }

    fn table_of(allowed: impl Fn(Pod, Pod) -> bool) -> String {
        let mut out = String::from("   ");
        for d in PODS {
            out.push_str(&format!(" {}{}", d.0, d.1));
        }
        out.push('\n');
        for s in PODS {
            out.push_str(&format!("{}{} ", s.0, s.1));
            for d in PODS {
                out.push_str(if allowed(s, d) { "  ." } else { "  X" });
            }
            out.push('\n');
        }
        out
    }

    /// Check the cluster with `policies` against `expected` on `protocol`/`port`.
    fn check(policies: &str, protocol: Protocol, port: u16, expected: impl Fn(Pod, Pod) -> bool) {
        let model = fixture::with(policies).model(None);
        let got = table(&model, protocol, port);
        let want = table_of(|s, d| s == d || expected(s, d));
        assert_eq!(got, want, "\ngot:\n{got}\nwant:\n{want}");
    }

    const TCP: Protocol = Protocol::Tcp;

    #[test]
    fn without_policies_everything_is_allowed() {
        check("", TCP, 80, |_, _| true);
        let model = fixture::with("").model(None);
        assert!(model.pods.is_empty());
    }

    #[test]
    fn default_deny_ingress_isolates_a_namespace() {
        let deny =
            "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
        check(deny, TCP, 80, |_, d| d.0 != "x");
        check(deny, Protocol::Udp, 80, |_, d| d.0 != "x");
        let model = fixture::with(deny).model(None);
        let v = model.evaluate(Packet {
            src: ip("y", "a"),
            dst: ip("x", "b"),
            protocol: TCP,
            port: 80,
        });
        assert_eq!(v.egress, Decision::NotIsolated);
        assert_eq!(
            v.ingress,
            Decision::Denied {
                policies: vec!["x/deny".into()]
            }
        );
        assert_eq!(v.dst_pod.as_deref(), Some("x/b"));
    }

    #[test]
    fn default_deny_egress() {
        let deny = "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        check(deny, TCP, 80, |s, _| s.0 != "x");
    }

    #[test]
    fn egress_rules_without_policy_types_isolate_both_ways() {
        // policyTypes defaults to [Ingress, Egress]: ingress is denied, egress allowed to z.
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n";
        check(p, TCP, 80, |s, d| {
            let into = d != ("x", "a");
            let out = s != ("x", "a") || d.0 == "z";
            into && out
        });
    }

    #[test]
    fn allow_by_pod_selector_is_the_policys_namespace_only() {
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";
        check(p, TCP, 80, |s, d| d != ("x", "a") || s == ("x", "b"));
    }

    #[test]
    fn allow_by_namespace_selector() {
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]\n";
        check(p, TCP, 80, |s, d| d != ("x", "a") || s.0 != "x");
        // The name label every namespace has.
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}}]}]\n";
        check(p, TCP, 80, |s, d| d.0 != "x" || s.0 == "y");
    }

    #[test]
    fn pod_and_namespace_selectors_together_and_apart() {
        // One peer with both: b pods of y and z.
        let both = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]}]\n";
        check(both, TCP, 80, |s, d| d != ("x", "a") || s == ("y", "b"));
        // Two peers: the whole of y, or b pods of x.
        let apart = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n";
        check(apart, TCP, 80, |s, d| {
            d != ("x", "a") || s.0 == "y" || s == ("x", "b")
        });
    }

    #[test]
    fn ip_block_with_except() {
        // n2's pods (10.244.2.0/24) but not x/c, y/c, z/c's /30 ... except x/c's address.
        let p = format!(
            "kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress]\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.244.2.0/24, except: [{}/32]}}}}]}}]\n",
            ip("y", "b")
        );
        let on_n2 = |p: Pod| ip(p.0, p.1).octets()[2] == 2;
        check(&p, TCP, 80, |s, d| {
            d != ("x", "a") || (on_n2(s) && s != ("y", "b"))
        });
    }

    #[test]
    fn ports_by_number_by_name_and_by_range() {
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}]}]\n";
        check(p, TCP, 80, |_, d| d.0 != "x");
        check(p, TCP, 81, |_, _| true);
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 81, endPort: 90}]}]\n";
        check(p, TCP, 80, |_, d| d.0 != "x");
        check(p, TCP, 81, |_, _| true);
        check(p, TCP, 90, |_, _| true);
        check(p, TCP, 91, |_, d| d.0 != "x");
        check(p, Protocol::Udp, 81, |_, d| d.0 != "x");
        // UDP by name; TCP port 80 stays closed.
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: serve-80-udp, protocol: UDP}, {protocol: SCTP}]}]\n";
        check(p, Protocol::Udp, 80, |_, _| true);
        check(p, TCP, 80, |_, d| d.0 != "x");
        check(p, Protocol::Sctp, 4000, |_, _| true);
    }

    #[test]
    fn egress_named_ports_are_the_destinations() {
        let p = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: serve-81-tcp}]}]\n";
        check(p, TCP, 81, |s, d| s != ("x", "a") || d.0 == "y");
        check(p, TCP, 80, |s, _| s != ("x", "a"));
        let model = fixture::with(p).model(Some("n1"));
        let rule = &model.pods[0].egress.as_ref().unwrap().rules[0];
        assert_eq!(
            rule.pinned,
            vec![
                (ip("y", "a"), TCP, 81),
                (ip("y", "b"), TCP, 81),
                (ip("y", "c"), TCP, 81)
            ]
        );
    }

    #[test]
    fn the_first_allowing_rule_is_named() {
        let p = "kind: NetworkPolicy\nmetadata: {name: a-first, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}, {ports: [{port: 80}]}]\n---\nkind: NetworkPolicy\nmetadata: {name: b-second, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n";
        let model = fixture::with(p).model(None);
        let decide = |s: Pod, port| {
            model
                .evaluate(Packet {
                    src: ip(s.0, s.1),
                    dst: ip("x", "a"),
                    protocol: TCP,
                    port,
                })
                .ingress
        };
        let origin = |policy: &str, index| {
            Decision::Allowed(Origin {
                policy: policy.into(),
                direction: Direction::Ingress,
                index,
            })
        };
        assert_eq!(decide(("x", "c"), 81), origin("x/a-first", 0));
        assert_eq!(decide(("y", "b"), 80), origin("x/a-first", 1));
        assert_eq!(decide(("y", "b"), 81), origin("x/b-second", 0));
        assert_eq!(
            decide(("y", "b"), 81).to_string(),
            "allowed by x/b-second ingress[0]"
        );
    }

    #[test]
    fn self_traffic_host_network_and_other_nodes() {
        let deny = "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
        let all = fixture::with(deny).model(None);
        let v = all.evaluate(Packet {
            src: ip("x", "a"),
            dst: ip("x", "a"),
            protocol: TCP,
            port: 80,
        });
        assert!(v.allowed() && v.ingress == Decision::SelfTraffic);
        // The host-network pod matches `pod: a` in x but is not isolated, and not a pod address.
        assert!(all.pods.iter().all(|p| p.pod != "x/node-exporter"));
        assert!(!all.pod_names.contains_key(&"192.168.0.2".parse().unwrap()));
        // A node's model holds its own pods only.
        let n1 = fixture::with(deny).model(Some("n1"));
        let pods: Vec<&str> = n1.pods.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(pods, ["x/a", "x/b", "x/c"]);
        assert!(fixture::with(deny).model(Some("n2")).pods.is_empty());
    }
}
