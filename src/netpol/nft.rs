//! A node's NetworkPolicy model as one nftables table, `table inet kemu-netpol`, written the
//! way `nft list table` prints it (so a snapshot of the live table reads like the render).
//!
//! The shape follows kube-network-policies (`pkg/dataplane/controller.go`), which decides in
//! the postrouting hook just before source NAT (there the destination is already translated
//! by the service proxy, whatever its mode, and the source not yet masqueraded; IPVS traffic
//! passes there too). Upstream hands the first packet of a connection to a userspace queue;
//! kemu decides in the kernel:
//!
//! ```text
//! chain egress    (filter, postrouting, priority srcnat - 6, policy accept)
//! chain ingress   (filter, postrouting, priority srcnat - 5, policy accept)
//!   ct state established,related accept        replies and accepted connections
//!   meta skuid 0 accept                        the node's own traffic (kubelet probes)
//!   ip saddr . ip daddr @self.<h> accept       a pod's traffic to itself
//!   ip saddr|daddr vmap @egress-pods.<h>|@ingress-pods.<h>   isolated local pod -> its chain
//! chain ingress/<ns>/<pod>                     jump to each isolating policy's chain; drop
//! chain policy/<ns>/<name>/ingress             one `accept` per rule (and protocol)
//! set from/<ns>/<policy>/<i>.<h>, to/...      a policy rule's peers (interval sets)
//! ```
//!
//! An `accept` ends one base chain only, so each direction has its own: a packet leaves a
//! pod's egress chain accepted or dropped, then meets the destination's ingress chain.
//! Lookups are by set and map, so the cost of a packet does not grow with the number of
//! pods; pods with the same policies (the usual case: one policy over a Deployment) share a
//! chain, named after the first of them. Sets and maps carry the hash `<h>` of their content
//! in their name, so that a change adds a new one rather than editing one in the kernel; a
//! change to one policy writes its chain and sets only ([`transaction`]). A node without
//! isolated pods gets no table at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{Direction, IsolatedPod, Model, Protocol, Rule};

/// The table's name (family `inet`).
pub const TABLE: &str = "kemu-netpol";

/// nftables' limits on names (`NFT_NAME_MAXLEN` 256 with room to spare) and comments.
const MAX_NAME: usize = 200;
const MAX_COMMENT: usize = 120;

/// A name nft accepts: long ones keep a readable start and end in a hash.
fn nft_name(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut cut = MAX_NAME - 13;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash}", &name[..cut])
}

fn comment(text: &str) -> String {
    let mut text = text.replace('"', "'");
    if text.len() > MAX_COMMENT {
        let mut cut = MAX_COMMENT - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("comment \"{text}\"")
}

/// The lines of one rule (several when it names several protocols; none when it can match
/// nothing, e.g. a named port no pod has).
fn rule_lines(rule: &Rule, direction: Direction, set: Option<&str>) -> Vec<String> {
    let addr = match direction {
        Direction::Ingress => "ip saddr",
        Direction::Egress => "ip daddr",
    };
    let note = comment(&rule.origin.to_string());
    let peers = set.map(|set| format!("{addr} @{set} ")).unwrap_or_default();
    let mut lines = Vec::new();
    match &rule.ports {
        None => lines.push(format!("{peers}accept {note}")),
        Some(ports) => {
            let mut by_protocol: BTreeMap<Protocol, Vec<String>> = BTreeMap::new();
            for range in ports {
                let entry = by_protocol.entry(range.protocol).or_default();
                if range.is_all() {
                    entry.clear();
                    entry.push(String::new());
                } else if entry.first().is_none_or(|e| !e.is_empty()) {
                    entry.push(if range.first == range.last {
                        range.first.to_string()
                    } else {
                        format!("{}-{}", range.first, range.last)
                    });
                }
            }
            for (protocol, ports) in by_protocol {
                let matcher = match ports.as_slice() {
                    [all] if all.is_empty() => format!("meta l4proto {protocol}"),
                    [one] => format!("{protocol} dport {one}"),
                    many => format!("{protocol} dport {{ {} }}", many.join(", ")),
                };
                lines.push(format!("{peers}{matcher} accept {note}"));
            }
        }
    }
    if !rule.pinned.is_empty() {
        let elements: Vec<String> = rule
            .pinned
            .iter()
            .map(|(ip, protocol, port)| format!("{ip} . {protocol} . {port}"))
            .collect();
        lines.push(format!(
            "ip daddr . meta l4proto . th dport {{ {} }} accept {note}",
            elements.join(", ")
        ));
    }
    lines
}

/// `name.<hash of content>`: sets and maps are named after what they hold, so a change is a
/// new set beside the old one, never an edit of a set in the kernel (for which `nft` would
/// first read every set of the table: a tenth of a second with 1,000 policies).
fn versioned(name: &str, content: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(content.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{hash}", nft_name(name))
}

/// A set or map of the table: its name (with the hash of its content) and its elements
/// (`10.0.0.0/24, 172.16.1.2`; empty: no element).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    pub name: String,
    pub elements: String,
}

impl Elements {
    fn new(base: &str, elements: String) -> Elements {
        Elements {
            name: versioned(base, &elements),
            elements,
        }
    }

    fn elements_clause(&self) -> String {
        if self.elements.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", self.elements)
        }
    }
}

/// The table of a node, as data: what [`Table::text`] prints and [`transaction`] diffs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub node: String,
    /// Peer sets by name.
    pub sets: BTreeMap<String, String>,
    /// The `self` set (`ip . ip` elements).
    pub selfs: Elements,
    /// The `ingress-pods` and `egress-pods` maps (`ip : jump chain` elements).
    pub maps: [Elements; 2],
    /// Regular chains: name → rules.
    pub chains: BTreeMap<String, Vec<String>>,
}

const SET_TYPE: &str = "type ipv4_addr; flags interval;";
const SELF_TYPE: &str = "type ipv4_addr . ipv4_addr;";
const MAP_TYPE: &str = "type ipv4_addr : verdict;";

/// The base chains: egress is decided first (at the source pod's end), then ingress. An
/// `accept` ends one base chain only, so each direction has its own.
const BASE_CHAINS: [(&str, &str, &str, usize); 2] = [
    ("egress", "srcnat - 6", "saddr", 1),
    ("ingress", "srcnat - 5", "daddr", 0),
];

impl Table {
    /// No pod of the node is isolated: the node gets no table.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(|m| m.elements.is_empty())
    }

    /// The rules of base chain `i` of [`BASE_CHAINS`].
    fn base_rules(&self, i: usize) -> [String; 4] {
        let (_, _, field, map) = BASE_CHAINS[i];
        [
            "ct state established,related accept".to_string(),
            "meta skuid 0 accept".to_string(),
            format!("ip saddr . ip daddr @{} accept", self.selfs.name),
            format!("ip {field} vmap @{}", self.maps[map].name),
        ]
    }

    /// The table as `nft list table inet kemu-netpol` prints it (and `nft -f` reads it);
    /// empty when [`Table::is_empty`].
    pub fn text(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        let _ = writeln!(out, "table inet {TABLE} {{");
        let _ = writeln!(
            out,
            "\t{}",
            comment(&format!(
                "NetworkPolicy of node {} (kemu netpol)",
                self.node
            ))
        );
        let mut declare = |kind: &str, name: &str, ty: &str, elements: &str| {
            let _ = writeln!(out, "\t{kind} {name} {{");
            for part in ty.split_terminator("; ") {
                let _ = writeln!(out, "\t\t{}", part.trim_end_matches(';'));
            }
            if !elements.is_empty() {
                let _ = writeln!(out, "\t\telements = {{ {elements} }}");
            }
            out.push_str("\t}\n\n");
        };
        for (name, elements) in &self.sets {
            declare("set", name, SET_TYPE, elements);
        }
        declare("set", &self.selfs.name, SELF_TYPE, &self.selfs.elements);
        for map in &self.maps {
            declare("map", &map.name, MAP_TYPE, &map.elements);
        }
        for (i, (name, priority, _, _)) in BASE_CHAINS.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "\tchain {name} {{\n\t\ttype filter hook postrouting priority {priority}; policy accept;"
            );
            for rule in self.base_rules(i) {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
        for (name, body) in &self.chains {
            let _ = writeln!(out, "\n\tchain {name} {{");
            for line in body {
                let _ = writeln!(out, "\t\t{line}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }
}

/// The table of `node`'s isolated pods: a chain per policy and direction (its rules, each
/// accepting what it allows), and per pod a chain that jumps to the chains of the policies
/// isolating it, then drops. A change to one policy rewrites that policy's chain and sets;
/// pods with the same policies share one chain, named after the first of them.
pub fn table(model: &Model, node: &str) -> Table {
    let pods: Vec<&IsolatedPod> = model.on_node(node).collect();
    let mut table = Table {
        node: node.to_string(),
        ..Table::default()
    };
    let mut maps: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut set_names: BTreeMap<&str, String> = BTreeMap::new();
    for (slot, direction) in [Direction::Ingress, Direction::Egress]
        .into_iter()
        .enumerate()
    {
        // Policy chains: (policy, body) → the pods using that body. Named ports can make one
        // policy's rules differ from pod to pod.
        let mut variants: BTreeMap<&str, Vec<Vec<String>>> = BTreeMap::new();
        let mut pod_bodies: Vec<(&IsolatedPod, Vec<(&str, usize)>)> = Vec::new();
        for pod in &pods {
            let Some(isolation) = pod.isolation(direction) else {
                continue;
            };
            let mut uses = Vec::new();
            for policy in &isolation.policies {
                let body: Vec<String> = isolation
                    .rules
                    .iter()
                    .filter(|r| &r.origin.policy == policy)
                    .flat_map(|r| {
                        let set = r.peers.as_deref().map(|set| {
                            set_names
                                .entry(set)
                                .or_insert_with(|| {
                                    let elements = model
                                        .peer_sets
                                        .get(set)
                                        .map(|a| a.to_string())
                                        .unwrap_or_default();
                                    let name = versioned(set, &elements);
                                    table.sets.insert(name.clone(), elements);
                                    name
                                })
                                .clone()
                        });
                        rule_lines(r, direction, set.as_deref())
                    })
                    .collect();
                if body.is_empty() {
                    // A policy without rules only isolates.
                    continue;
                }
                let list = variants.entry(policy).or_default();
                let index = match list.iter().position(|b| *b == body) {
                    Some(i) => i,
                    None => {
                        list.push(body);
                        list.len() - 1
                    }
                };
                uses.push((policy.as_str(), index));
            }
            pod_bodies.push((pod, uses));
        }
        let chain_name = |policy: &str, index: usize| {
            let base = format!("policy/{policy}/{direction}");
            nft_name(&if index == 0 {
                base
            } else {
                format!("{base}/{index}")
            })
        };
        for (policy, bodies) in &variants {
            for (index, body) in bodies.iter().enumerate() {
                table.chains.insert(chain_name(policy, index), body.clone());
            }
        }
        let mut by_body: BTreeMap<Vec<String>, String> = BTreeMap::new();
        for (pod, uses) in pod_bodies {
            let mut body: Vec<String> = uses
                .iter()
                .map(|(policy, index)| format!("jump {}", chain_name(policy, *index)))
                .collect();
            body.push("drop".to_string());
            let name = by_body
                .entry(body.clone())
                .or_insert_with(|| nft_name(&format!("{direction}/{}", pod.pod)))
                .clone();
            table.chains.entry(name.clone()).or_insert(body);
            maps[slot].push(format!("{} : jump {name}", pod.ip));
        }
    }
    let [ingress, egress] = maps;
    table.maps = [
        Elements::new("ingress-pods", ingress.join(", ")),
        Elements::new("egress-pods", egress.join(", ")),
    ];
    let mut ips: Vec<_> = pods.iter().map(|p| p.ip).collect();
    ips.sort();
    let selfs: Vec<String> = ips.iter().map(|ip| format!("{ip} . {ip}")).collect();
    table.selfs = Elements::new("self", selfs.join(", "));
    table
}

/// The table of `node`'s isolated pods as text; empty when no pod of the node is isolated.
pub fn render(model: &Model, node: &str) -> String {
    table(model, node).text()
}

/// The `nft -f` transaction that makes the table `rendered` (a [`render`] result) the only
/// one of its name, atomically: created if missing, deleted, and declared again when there
/// is anything to declare.
pub fn replace(rendered: &str) -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n{rendered}")
}

/// The `nft -f` transaction that removes the table, whether or not it exists.
pub fn remove() -> String {
    replace("")
}

/// The `nft -f` transaction from `old` (in the kernel) to `new`: the whole table when there
/// was none or there will be none, else only what changed, in one atomic transaction: new
/// sets (with their elements), new and changed chains (policies before the pods' chains
/// that jump to them), new maps and the base chains that look them up, then what is gone.
/// Nothing in it makes `nft` read the table's sets or maps first.
pub fn transaction(old: Option<&Table>, new: &Table) -> String {
    let old = match old {
        Some(old) if !old.is_empty() && !new.is_empty() && old.node == new.node => old,
        _ => return replace(&new.text()),
    };
    let t = format!("inet {TABLE}");
    let mut out = String::new();
    let add = |out: &mut String, kind: &str, e: &Elements, ty: &str| {
        let _ = writeln!(
            out,
            "add {kind} {t} {} {{ {ty} {} }}",
            e.name,
            e.elements_clause()
        );
    };
    for (name, elements) in new.sets.iter().filter(|(n, _)| !old.sets.contains_key(*n)) {
        add(
            &mut out,
            "set",
            &Elements {
                name: name.clone(),
                elements: elements.clone(),
            },
            SET_TYPE,
        );
    }
    if old.selfs.name != new.selfs.name {
        add(&mut out, "set", &new.selfs, SELF_TYPE);
    }
    // Chains are declared before any rule jumps to them.
    for name in new.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
        let _ = writeln!(out, "add chain {t} {name}");
    }
    // Policy chains before the pod chains that jump to them (`policy/` sorts after both
    // `egress/` and `ingress/`, hence the two passes).
    let changed = |name: &&String| old.chains.get(*name) != new.chains.get(*name);
    let (policies, pods): (Vec<&String>, Vec<&String>) = new
        .chains
        .keys()
        .filter(changed)
        .partition(|n| n.starts_with("policy/"));
    for name in policies.into_iter().chain(pods) {
        if old.chains.contains_key(name) {
            let _ = writeln!(out, "flush chain {t} {name}");
        }
        for rule in &new.chains[name] {
            let _ = writeln!(out, "add rule {t} {name} {rule}");
        }
    }
    for (slot, map) in new.maps.iter().enumerate() {
        if old.maps[slot].name != map.name {
            add(&mut out, "map", map, MAP_TYPE);
        }
    }
    for (i, (name, _, _, _)) in BASE_CHAINS.iter().enumerate() {
        let rules = new.base_rules(i);
        if old.base_rules(i) != rules {
            let _ = writeln!(out, "flush chain {t} {name}");
            for rule in rules {
                let _ = writeln!(out, "add rule {t} {name} {rule}");
            }
        }
    }
    // What is gone, once nothing refers to it: old maps, then pod chains (no map jumps
    // there), then policy chains (no pod chain jumps there), then sets.
    for (slot, map) in old.maps.iter().enumerate() {
        if new.maps[slot].name != map.name {
            let _ = writeln!(out, "delete map {t} {}", map.name);
        }
    }
    if old.selfs.name != new.selfs.name {
        let _ = writeln!(out, "delete set {t} {}", old.selfs.name);
    }
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    let (gone_policies, gone_pods): (Vec<&String>, Vec<&String>) =
        gone.into_iter().partition(|n| n.starts_with("policy/"));
    for name in gone_pods.iter().chain(&gone_policies) {
        let _ = writeln!(out, "flush chain {t} {name}");
    }
    for name in gone_pods.iter().chain(&gone_policies) {
        let _ = writeln!(out, "delete chain {t} {name}");
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(out, "delete set {t} {name}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::fixture;

    /// One policy of each kind the renderer has a shape for.
    const POLICIES: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {matchLabels: {ns: 'y'}}
      podSelector: {matchLabels: {pod: c}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}
    ports: [{port: serve-81-tcp}, {port: 8000, endPort: 8080}, {protocol: UDP, port: 53}, {protocol: SCTP}]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: serve-80-tcp}, {port: 443}]
  - to: [{ipBlock: {cidr: 192.168.3.10/32}}]
---
kind: NetworkPolicy
metadata: {name: open, namespace: 'y'}
spec:
  podSelector: {}
  ingress: [{}]
"#;

    #[test]
    fn a_nodes_table() {
        let objects = fixture::with(POLICIES);
        let n1 = render(&objects.model(Some("n1")), "n1");
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(n1));
        // Pods with the same policies share a chain: x/b and x/c have deny-all's alone.
        assert!(
            n1.contains("10.244.1.11 : jump egress/x/b, 10.244.1.12 : jump egress/x/b"),
            "{n1}"
        );
        assert!(!n1.contains("chain egress/x/c"));
        // n2 holds none of x's pods, and y's there are open to all.
        let n2 = render(&objects.model(Some("n2")), "n2");
        assert!(
            n2.contains("chain ingress/y/c {\n\t\tjump policy/y/open/ingress\n\t\tdrop\n")
                && n2.contains(
                    "chain policy/y/open/ingress {\n\t\taccept comment \"y/open ingress[0]\"\n"
                ),
            "{n2}"
        );
        assert!(!n2.contains("egress/"));
    }

    #[test]
    fn a_node_without_isolated_pods_has_no_table() {
        let objects = fixture::with(POLICIES);
        // Node n3 runs nothing; the whole cluster without policies isolates nothing.
        assert_eq!(render(&objects.model(Some("n3")), "n3"), "");
        assert_eq!(render(&fixture::with("").model(Some("n1")), "n1"), "");
        assert_eq!(
            remove(),
            "table inet kemu-netpol\ndelete table inet kemu-netpol\n"
        );
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let long = "n".repeat(250);
        let name = nft_name(&format!("from/ns/{long}/0"));
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert_ne!(name, nft_name(&format!("from/ns/{long}/1")));
        assert!(comment(&long).len() <= 130);
    }
}
