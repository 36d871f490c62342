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
//! chain postrouting   (filter, postrouting, priority srcnat - 5, policy accept)
//!   ct state established,related accept        replies and accepted connections
//!   meta skuid 0 accept                        the node's own traffic (kubelet probes)
//!   ip saddr . ip daddr @self accept           a pod's traffic to itself
//!   ip daddr vmap @ingress                     isolated local pod -> jump its ingress chain
//!   ip saddr vmap @egress                      isolated local pod -> jump its egress chain
//! chain ingress/<ns>/<pod>                     one `return` per allowing rule, then drop
//! set from/<ns>/<policy>/<i>, to/...          a policy rule's peers (interval sets)
//! ```
//!
//! Lookups are by set and map, so the cost of a packet does not grow with the number of
//! policies; pods with the same rules (the usual case: one policy over a Deployment) share one
//! chain, named after the first of them. A node without isolated pods gets no table at all.

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
fn rule_lines(rule: &Rule, direction: Direction) -> Vec<String> {
    let addr = match direction {
        Direction::Ingress => "ip saddr",
        Direction::Egress => "ip daddr",
    };
    let note = comment(&rule.origin.to_string());
    let peers = rule
        .peers
        .as_ref()
        .map(|set| format!("{addr} @{} ", nft_name(set)))
        .unwrap_or_default();
    let mut lines = Vec::new();
    match &rule.ports {
        None => lines.push(format!("{peers}return {note}")),
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
                lines.push(format!("{peers}{matcher} return {note}"));
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
            "ip daddr . meta l4proto . th dport {{ {} }} return {note}",
            elements.join(", ")
        ));
    }
    lines
}

/// The body of a pod's chain for `direction`, if it is isolated in it.
fn chain_body(pod: &IsolatedPod, direction: Direction) -> Option<Vec<String>> {
    let isolation = pod.isolation(direction)?;
    let mut lines: Vec<String> = isolation
        .rules
        .iter()
        .flat_map(|r| rule_lines(r, direction))
        .collect();
    lines.push("drop".to_string());
    Some(lines)
}

/// The table of `node`'s isolated pods, as `nft list table inet kemu-netpol` prints it;
/// empty when no pod of the node is isolated.
pub fn render(model: &Model, node: &str) -> String {
    let pods: Vec<&IsolatedPod> = model.on_node(node).collect();
    if pods.is_empty() {
        return String::new();
    }
    // Chains by body, so that pods with the same rules share one.
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut by_body: BTreeMap<(Direction, Vec<String>), usize> = BTreeMap::new();
    let mut maps: [Vec<(std::net::Ipv4Addr, usize)>; 2] = [Vec::new(), Vec::new()];
    let mut used_sets: BTreeMap<String, &str> = BTreeMap::new();
    for (slot, direction) in [Direction::Ingress, Direction::Egress]
        .into_iter()
        .enumerate()
    {
        for pod in &pods {
            let Some(body) = chain_body(pod, direction) else {
                continue;
            };
            for rule in &pod.isolation(direction).expect("isolated").rules {
                if let Some(set) = &rule.peers {
                    used_sets.insert(nft_name(set), set);
                }
            }
            let index = *by_body.entry((direction, body.clone())).or_insert_with(|| {
                chains.push((nft_name(&format!("{direction}/{}", pod.pod)), body));
                chains.len() - 1
            });
            maps[slot].push((pod.ip, index));
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "table inet {TABLE} {{");
    let _ = writeln!(
        out,
        "\t{}",
        comment(&format!("NetworkPolicy of node {node} (kemu netpol)"))
    );
    for (name, set) in &used_sets {
        let _ = writeln!(
            out,
            "\tset {name} {{\n\t\ttype ipv4_addr\n\t\tflags interval"
        );
        if let Some(addrs) = model.peer_sets.get(*set).filter(|a| !a.is_empty()) {
            let _ = writeln!(out, "\t\telements = {{ {addrs} }}");
        }
        out.push_str("\t}\n\n");
    }
    out.push_str("\tset self {\n\t\ttype ipv4_addr . ipv4_addr\n");
    let mut ips: Vec<_> = pods.iter().map(|p| p.ip).collect();
    ips.sort();
    let selfs: Vec<String> = ips.iter().map(|ip| format!("{ip} . {ip}")).collect();
    let _ = writeln!(out, "\t\telements = {{ {} }}\n\t}}\n", selfs.join(", "));
    for (slot, name) in ["ingress", "egress"].into_iter().enumerate() {
        let _ = writeln!(out, "\tmap {name} {{\n\t\ttype ipv4_addr : verdict");
        let mut entries = maps[slot].clone();
        entries.sort();
        if !entries.is_empty() {
            let elements: Vec<String> = entries
                .iter()
                .map(|(ip, chain)| format!("{ip} : jump {}", chains[*chain].0))
                .collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n\n");
    }
    out.push_str(
        "\tchain postrouting {\n\
         \t\ttype filter hook postrouting priority srcnat - 5; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tmeta skuid 0 accept\n\
         \t\tip saddr . ip daddr @self accept\n\
         \t\tip daddr vmap @ingress\n\
         \t\tip saddr vmap @egress\n\
         \t}\n",
    );
    let mut chains = chains;
    chains.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, body) in &chains {
        let _ = writeln!(out, "\n\tchain {name} {{");
        for line in body {
            let _ = writeln!(out, "\t\t{line}");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
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
        // Pods with the same rules share a chain: x/b and x/c have deny-all's alone.
        assert!(
            n1.contains("10.244.1.11 : jump egress/x/b, 10.244.1.12 : jump egress/x/b"),
            "{n1}"
        );
        assert!(!n1.contains("chain egress/x/c"));
        // n2 holds none of x's pods, and y's there are open to all: a chain of one return.
        let n2 = render(&objects.model(Some("n2")), "n2");
        assert!(
            n2.contains(
                "chain ingress/y/c {\n\t\treturn comment \"y/open ingress[0]\"\n\t\tdrop\n"
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
