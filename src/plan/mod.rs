//! A lab's construction plan: the ordered steps that turn a `Topology` into namespaces, links,
//! addresses, routes, the overlay and files. Pure data, computed without privileges; the lab
//! module executes it, `kemu up --dry-run` prints it.
//!
//! Steps carry a phase (namespaces, then links, then per-namespace configuration, then files).
//! Within a phase the executor works on many namespaces at once but keeps each namespace's
//! steps in plan order, which is the only ordering the kernel needs.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::netlink::{Mac, NetOp};
use crate::overlay::{self, Lease, POD_BRIDGE, UNDERLAY_DEVICE};
use crate::topology::{Host, Topology};

/// Sysctls of a cluster host (master or minion): a Kubernetes node forwards packets, does not
/// drop asymmetric routes, and passes bridged pod traffic through iptables so that pod-to-
/// service traffic on one bridge meets the proxy's rules (`br_netfilter`).
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Sysctls of an outside client: an ordinary machine.
pub const CLIENT_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Sysctls of the router between segments.
pub const ROUTER_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Sysctls of the fabric: plain L2 switches, so bridged frames bypass netfilter.
pub const FABRIC_SYSCTLS: &[(&str, &str)] = &[
    ("net.bridge.bridge-nf-call-iptables", "0"),
    ("net.bridge.bridge-nf-call-ip6tables", "0"),
    ("net.bridge.bridge-nf-call-arptables", "0"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// What a namespace is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    Fabric,
    Router,
    Host,
}

/// A namespace to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub kind: NsKind,
    /// The host's name, for host namespaces.
    pub host: Option<String>,
    pub sysctls: &'static [(&'static str, &'static str)],
}

/// Index into `Plan::namespaces`.
pub type NsId = u32;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create and pin a namespace and set its sysctls.
    Namespace(NsId),
    /// A link between namespaces (fabric bridges and the veths on them).
    Link { ns: NsId, op: NetOp },
    /// A kernel operation inside a namespace.
    Net { ns: NsId, op: NetOp },
    /// Make one remote lease reachable (the backend's entries for `Plan::leases[lease]`).
    OverlayPeer { ns: NsId, lease: u32 },
    /// Write a file in the lab's state directory.
    File { path: PathBuf, contents: String },
}

impl Step {
    /// Execution phase: 0 namespaces, 1 links, 2 per-namespace configuration, 3 files.
    pub fn phase(&self) -> u8 {
        match self {
            Step::Namespace(_) => 0,
            Step::Link { .. } => 1,
            Step::Net { .. } | Step::OverlayPeer { .. } => 2,
            Step::File { .. } => 3,
        }
    }

    /// The namespace a step works in, if any.
    pub fn namespace(&self) -> Option<NsId> {
        match self {
            Step::Namespace(ns)
            | Step::Link { ns, .. }
            | Step::Net { ns, .. }
            | Step::OverlayPeer { ns, .. } => Some(*ns),
            Step::File { .. } => None,
        }
    }
}

/// The whole plan of a lab.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lab: String,
    pub state_dir: PathBuf,
    pub namespaces: Vec<NamespaceSpec>,
    pub steps: Vec<Step>,
    /// Leases of every minion (the overlay's peers).
    pub leases: Vec<Lease>,
    pub backend: crate::topology::Backend,
}

impl Plan {
    /// Number of kernel operations the plan performs (overlay peers expanded).
    pub fn operation_count(&self) -> usize {
        let per_peer = overlay::backend(self.backend)
            .peer(self.leases.first().unwrap_or(&dummy_lease()))
            .len();
        self.steps
            .iter()
            .map(|s| match s {
                Step::OverlayPeer { .. } => per_peer,
                _ => 1,
            })
            .sum()
    }
}

fn dummy_lease() -> Lease {
    Lease {
        host: String::new(),
        subnet: "10.0.0.0/24".parse().expect("constant"),
        public_ip: [10, 0, 0, 1].into(),
        vtep_mac: Some(Mac([2, 0, 0, 0, 0, 1])),
    }
}

/// Name of the fabric-side end of a host's (or the router's) veth: short, unique and stable,
/// derived from the lab and the other end's owner (interface names are limited to 15 bytes).
pub fn fabric_port_name(lab: &str, owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("kemu/{lab}/{owner}").as_bytes());
    format!(
        "kv{:02x}{:02x}{:02x}{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

/// The leases of a topology's minions, in file order.
pub fn leases(topo: &Topology) -> Vec<Lease> {
    topo.minions()
        .map(|h| Lease {
            host: h.name.clone(),
            subnet: h.subnet.expect("validated: minions have a subnet"),
            public_ip: h.ip,
            vtep_mac: match topo.cluster_network.backend {
                crate::topology::Backend::Vxlan => Some(overlay::vtep_mac(&topo.name, &h.name)),
                crate::topology::Backend::HostGw => None,
            },
        })
        .collect()
}

/// Who programs the pod overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayBy {
    /// The launcher, while building the lab (`--network-only`).
    Launcher,
    /// Each minion's `kemu flanneld`, from the leases on the Node objects.
    Agents,
}

/// Build the plan of a topology. `state_dir` is `/run/kemu/<lab>`.
pub fn plan(topo: &Topology, state_dir: &Path, overlay_by: OverlayBy) -> Plan {
    let lab = &topo.name;
    let mut namespaces = vec![NamespaceSpec {
        name: topo.fabric_namespace(),
        kind: NsKind::Fabric,
        host: None,
        sysctls: FABRIC_SYSCTLS,
    }];
    const FABRIC: NsId = 0;
    const ROUTER: NsId = 1;
    namespaces.push(NamespaceSpec {
        name: topo.router_namespace(),
        kind: NsKind::Router,
        host: None,
        sysctls: ROUTER_SYSCTLS,
    });
    for host in &topo.hosts {
        namespaces.push(NamespaceSpec {
            name: topo.host_namespace(host),
            kind: NsKind::Host,
            host: Some(host.name.clone()),
            sysctls: if host.is_client() {
                CLIENT_SYSCTLS
            } else {
                NODE_SYSCTLS
            },
        });
    }
    let host_ns = |i: usize| (i + 2) as NsId;
    let mut steps: Vec<Step> = (0..namespaces.len() as NsId).map(Step::Namespace).collect();
    let mtu = topo.mtu;

    // Phase 1: one bridge per segment in the fabric; veths from the fabric to the router and
    // to every host, the far end created directly in its namespace as eth0 / to-<segment>.
    for seg in &topo.segments {
        steps.push(Step::Link {
            ns: FABRIC,
            op: NetOp::Bridge {
                name: format!("br-{}", seg.name).into(),
                mac: Mac::derive(&format!("kemu/{lab}/fabric/br-{}", seg.name)),
                mtu,
            },
        });
    }
    for seg in &topo.segments {
        let owner = format!("router/{}", seg.name);
        steps.push(Step::Link {
            ns: FABRIC,
            op: NetOp::Veth {
                name: fabric_port_name(lab, &owner).into(),
                mac: Mac::derive(&format!("kemu/{lab}/fabric/{owner}")),
                peer: format!("to-{}", seg.name).into(),
                peer_mac: Mac::derive(&format!("kemu/{lab}/{owner}")),
                peer_ns: topo.router_namespace(),
                mtu,
                master: Some(format!("br-{}", seg.name).into()),
                alias: format!("kemu:{lab}:router"),
            },
        });
    }
    for host in &topo.hosts {
        steps.push(Step::Link {
            ns: FABRIC,
            op: NetOp::Veth {
                name: fabric_port_name(lab, &host.name).into(),
                mac: Mac::derive(&format!("kemu/{lab}/fabric/{}", host.name)),
                peer: UNDERLAY_DEVICE.into(),
                peer_mac: underlay_mac(lab, host),
                peer_ns: topo.host_namespace(host),
                mtu,
                master: Some(format!("br-{}", host.segment).into()),
                alias: format!("kemu:{lab}:{}", host.name),
            },
        });
    }

    // Phase 2: the router's legs, then each host's underlay, pod bridge and overlay device.
    steps.push(Step::Net {
        ns: ROUTER,
        op: NetOp::Up { dev: "lo".into() },
    });
    for seg in &topo.segments {
        let dev: crate::netlink::IfName = format!("to-{}", seg.name).into();
        steps.push(Step::Net {
            ns: ROUTER,
            op: NetOp::Address {
                dev: dev.clone(),
                addr: ipnet::Ipv4Net::new(seg.gateway, seg.cidr.prefix_len()).expect("valid"),
            },
        });
        steps.push(Step::Net {
            ns: ROUTER,
            op: NetOp::Up { dev },
        });
    }
    let leases = leases(topo);
    let backend = overlay::backend(topo.cluster_network.backend);
    for (i, host) in topo.hosts.iter().enumerate() {
        let ns = host_ns(i);
        let segment = topo.segment_of(host);
        let net = |op| Step::Net { ns, op };
        steps.push(net(NetOp::Up { dev: "lo".into() }));
        steps.push(net(NetOp::Address {
            dev: UNDERLAY_DEVICE.into(),
            addr: ipnet::Ipv4Net::new(host.ip, segment.cidr.prefix_len()).expect("valid"),
        }));
        steps.push(net(NetOp::Up {
            dev: UNDERLAY_DEVICE.into(),
        }));
        steps.push(net(NetOp::Route {
            dst: "0.0.0.0/0".parse().expect("constant"),
            via: Some(segment.gateway),
            dev: Some(UNDERLAY_DEVICE.into()),
            onlink: false,
        }));
        let Some(subnet) = host.subnet else { continue };
        steps.push(net(NetOp::Bridge {
            name: POD_BRIDGE.into(),
            mac: Mac::derive(&format!("kemu/{lab}/{}/{POD_BRIDGE}", host.name)),
            mtu: backend.mtu(mtu),
        }));
        steps.push(net(NetOp::Address {
            dev: POD_BRIDGE.into(),
            addr: overlay::pod_gateway(subnet),
        }));
        if overlay_by == OverlayBy::Agents {
            continue;
        }
        let local = leases
            .iter()
            .position(|l| l.host == host.name)
            .expect("minion has a lease");
        for op in backend.device(&leases[local], mtu) {
            steps.push(net(op));
        }
        for (j, _) in leases.iter().enumerate().filter(|(j, _)| *j != local) {
            steps.push(Step::OverlayPeer {
                ns,
                lease: j as u32,
            });
        }
    }

    // Phase 3: files the agents and `kemu exec` read.
    let hosts_file = hosts_file(topo);
    for host in &topo.hosts {
        let dir = state_dir.join("hosts").join(&host.name);
        steps.push(Step::File {
            path: dir.join("hosts"),
            contents: hosts_file.clone(),
        });
        if let (Some(subnet), OverlayBy::Launcher) = (host.subnet, overlay_by) {
            steps.push(Step::File {
                path: dir.join("subnet.env"),
                contents: overlay::subnet_env(
                    topo.cluster_network.network,
                    subnet,
                    topo.pod_mtu(),
                    true,
                ),
            });
        }
    }
    if !topo.dns.upstream.is_empty() {
        // The nodes' resolv.conf (the kubelet's --resolv-conf): pods with `dnsPolicy: Default`
        // and the cluster DNS itself ask the lab's upstream nameservers.
        steps.push(Step::File {
            path: state_dir.join("resolv.conf"),
            contents: topo
                .dns
                .upstream
                .iter()
                .map(|ip| format!("nameserver {ip}\n"))
                .collect(),
        });
    }
    steps.push(Step::File {
        path: state_dir.join("net-conf.json"),
        contents: crate::flannel::NetConf::render(
            topo.cluster_network.network,
            topo.cluster_network.backend,
        ),
    });
    Plan {
        lab: lab.to_string(),
        state_dir: state_dir.to_path_buf(),
        namespaces,
        steps,
        leases,
        backend: topo.cluster_network.backend,
    }
}

/// The deterministic MAC of a host's eth0.
pub fn underlay_mac(lab: &str, host: &Host) -> Mac {
    Mac::derive(&format!("kemu/{lab}/{}/{UNDERLAY_DEVICE}", host.name))
}

/// `/etc/hosts` as seen inside the lab: every host by name.
fn hosts_file(topo: &Topology) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n");
    for host in &topo.hosts {
        if host.name != host.ip.to_string() {
            out.push_str(&format!("{}\t{}\n", host.ip, host.name));
        }
    }
    out
}

impl fmt::Display for Plan {
    /// One line per kernel operation, as the equivalent shell command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = overlay::backend(self.backend);
        let mut n = 0usize;
        let mut line = |f: &mut fmt::Formatter<'_>, text: String| {
            n += 1;
            writeln!(f, "{n:>4}  {text}")
        };
        let mut phase = u8::MAX;
        for step in &self.steps {
            if step.phase() != phase {
                phase = step.phase();
                let title = [
                    "namespaces",
                    "links",
                    "addresses, routes, pod bridges and overlay",
                    "files",
                ];
                writeln!(f, "# {}", title[phase as usize])?;
            }
            match step {
                Step::Namespace(ns) => {
                    let spec = &self.namespaces[*ns as usize];
                    let sysctls: Vec<String> = spec
                        .sysctls
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    line(f, format!("ip netns add {}", spec.name))?;
                    line(
                        f,
                        format!(
                            "ip netns exec {} sysctl -qw {}",
                            spec.name,
                            sysctls.join(" ")
                        ),
                    )?;
                }
                Step::Link { ns, op } | Step::Net { ns, op } => {
                    line(f, in_namespace(&self.namespaces[*ns as usize].name, op))?;
                }
                Step::OverlayPeer { ns, lease } => {
                    for op in backend.peer(&self.leases[*lease as usize]) {
                        line(f, in_namespace(&self.namespaces[*ns as usize].name, &op))?;
                    }
                }
                Step::File { path, contents } => {
                    line(
                        f,
                        format!("write {} ({} bytes)", path.display(), contents.len()),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The shell command of an operation run in namespace `ns`: `ip -n NS ...`, `bridge -n NS ...`.
fn in_namespace(ns: &str, op: &NetOp) -> String {
    op.to_string()
        .split(" && ")
        .map(|cmd| match cmd.split_once(' ') {
            Some((program, rest)) => format!("{program} -n {ns} {rest}"),
            None => cmd.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_gw_plan_routes_via_peers_and_has_no_vxlan_device() {
        let topo = crate::topology::parse(
            "inline",
            "name: hg\nsegments: [{name: lan, cidr: 10.1.0.0/24}]\nhosts:\n  - {name: a, ip: 10.1.0.10, roles: [master, minion]}\n  - {name: b, ip: 10.1.0.11, roles: [minion]}\nclusterNetwork: {network: 10.244.0.0/16, backend: host-gw}\n",
        )
        .unwrap();
        let plan = plan(&topo, Path::new("/run/kemu/hg"), OverlayBy::Launcher);
        let text = plan.to_string();
        assert!(!text.contains("vxlan"));
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(text));
    }

    #[test]
    fn fabric_port_names_fit_interface_names() {
        let name = fabric_port_name("a-lab-name-that-is-thirty-two-ch", "a-very-long-host-name");
        assert!(name.len() <= 15, "{name}");
    }
}
