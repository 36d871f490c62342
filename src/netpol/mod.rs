//! NetworkPolicy enforcement, as kube-network-policies (kindnet's) does it, in nftables:
//!
//! - [`model`]: Pods, Namespaces and NetworkPolicies → which pods are isolated and what each
//!   policy rule allows them (pure; also answers `kemu reach --why`);
//! - [`nft`]: a node's part of the model → its `table inet kemu-netpol` (pure, snapshot-tested);
//! - [`objects`]: the same objects read from YAML (`kemu netpol render`, tests);
//! - [`addrs`]: the IPv4 interval sets behind `ipBlock`/`except` and peer lists;
//! - [`agent`]: `kemu netpol`, the per-node agent that watches the objects and applies the
//!   table with `nft -f` in its host's namespace.

pub mod addrs;
pub mod agent;
pub mod model;
pub mod nft;
pub mod objects;

pub use model::{Direction, Model, Objects, Packet, Protocol, Verdict};

/// The cluster the unit tests decide on: namespaces x, y, z (label `ns`), pods a, b, c in each
/// (label `pod`; x/a, x/b, x/c, y/a, y/b on node n1 as 10.244.1.x, the others on n2), every pod serving
/// `serve-80-tcp`, `serve-81-tcp` and `serve-80-udp`, as the upstream e2e suite's pods do
/// (`test/e2e/network/netpol/`), plus a host-network pod on n1.
#[cfg(test)]
pub(crate) mod fixture {
    use std::fmt::Write as _;
    use std::net::Ipv4Addr;

    use super::objects::{PolicyObjects, parse_yaml};

    pub fn ip(ns: &str, pod: &str) -> Ipv4Addr {
        let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap() as u8;
        let p = ["a", "b", "c"].iter().position(|x| *x == pod).unwrap() as u8;
        let node = if (n * 3 + p) < 5 { 1 } else { 2 };
        Ipv4Addr::new(10, 244, node, 10 + n * 3 + p)
    }

    pub fn cluster() -> String {
        let mut yaml = String::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            let _ = writeln!(
                yaml,
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}"
            );
            for (j, pod) in ["a", "b", "c"].iter().enumerate() {
                let node = if i * 3 + j < 5 { "n1" } else { "n2" };
                let _ = writeln!(
                    yaml,
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: \"{ns}\", labels: {{pod: {pod}}}}}\n\
                     spec:\n  nodeName: {node}\n  containers:\n  - name: c80\n    image: agnhost\n    ports:\n\
                     \x20   - {{name: serve-80-tcp, containerPort: 80}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
                     \x20 - name: c81\n    image: agnhost\n    ports: [{{name: serve-81-tcp, containerPort: 81}}]\n\
                     status: {{phase: Running, podIP: {}}}",
                    ip(ns, pod)
                );
            }
        }
        yaml.push_str(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: node-exporter, namespace: x, labels: {pod: a}}\n\
             spec: {nodeName: n1, hostNetwork: true, containers: [{name: c, image: agnhost}]}\n\
             status: {phase: Running, podIP: 192.168.0.2}\n",
        );
        yaml
    }

    /// The cluster with `policies` (YAML documents) added.
    pub fn with(policies: &str) -> PolicyObjects {
        parse_yaml(&format!("{}---\n{policies}", cluster())).unwrap()
    }
}
