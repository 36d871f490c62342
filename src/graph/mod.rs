//! `kemu graph`: a picture of a lab. [`model`] turns a resolved topology (and, for a running
//! lab, what `kemu status` and the API server say: each host's live proxy mode and the pods
//! per node) into a [`Graph`]; `dot`, `mermaid` and `svg` draw it. Everything here is pure;
//! `cli::graph` gathers the live part.
//!
//! The picture is layered, top to bottom: the router that joins the segments (every host's
//! default gateway), the segments (one bridge each), the hosts of each segment, and the
//! overlay that carries pod traffic between the minions.

mod dot;
mod mermaid;
mod svg;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

pub use dot::dot;
pub use mermaid::mermaid;
pub use svg::svg;

use crate::topology::{Backend, Role, Topology};

/// What the picture shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub lab: String,
    pub service_cidr: Ipv4Net,
    pub segments: Vec<SegmentNode>,
    pub hosts: Vec<HostNode>,
    pub overlay: Overlay,
    /// Whether proxy modes and pods were read from a running lab (else: the file's modes).
    pub live: bool,
}

/// One L2 segment: a bridge in the fabric namespace, with a leg of the router.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentNode {
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// One emulated machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub segment: String,
    pub roles: Vec<Role>,
    /// The minion's pod subnet.
    pub subnet: Option<Ipv4Net>,
    /// The proxy mode: live on a running lab (`old->new` during a switch), else the file's;
    /// `None` for clients, which run no proxy.
    pub proxy: Option<String>,
    /// The pods bound to this node (running lab only), by namespace and name.
    pub pods: Vec<PodItem>,
}

/// A pod on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PodItem {
    pub namespace: String,
    pub name: String,
    pub ip: Option<String>,
}

/// The pod network that joins the minions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overlay {
    pub backend: Backend,
    pub network: Ipv4Net,
    pub pod_mtu: u32,
}

/// What a running lab adds to the file: each host's live proxy mode (as `kemu status` shows
/// it) and the pods per node name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub proxy: BTreeMap<String, String>,
    pub pods: BTreeMap<String, Vec<PodItem>>,
}

/// The graph of `topo`, with `live` facts when the lab runs.
pub fn model(topo: &Topology, live: Option<&Live>) -> Graph {
    let hosts = topo
        .hosts
        .iter()
        .map(|h| {
            let proxy = (!h.is_client()).then(|| {
                live.and_then(|l| l.proxy.get(&h.name).cloned())
                    .unwrap_or_else(|| h.proxy_mode.to_string())
            });
            let mut pods = live
                .and_then(|l| l.pods.get(&h.name).cloned())
                .unwrap_or_default();
            pods.sort();
            HostNode {
                name: h.name.clone(),
                ip: h.ip,
                segment: h.segment.clone(),
                roles: h.roles.clone(),
                subnet: h.subnet,
                proxy,
                pods,
            }
        })
        .collect();
    Graph {
        lab: topo.name.to_string(),
        service_cidr: topo.service_cidr,
        segments: topo
            .segments
            .iter()
            .map(|s| SegmentNode {
                name: s.name.clone(),
                cidr: s.cidr,
                gateway: s.gateway,
            })
            .collect(),
        hosts,
        overlay: Overlay {
            backend: topo.cluster_network.backend,
            network: topo.cluster_network.network,
            pod_mtu: topo.pod_mtu(),
        },
        live: live.is_some(),
    }
}

// The texts of the boxes, shared by the three formats so that they show the same facts.

impl Graph {
    /// The caption: the lab (`running` when drawn from a running lab) and its ranges.
    pub fn title(&self) -> String {
        format!(
            "lab {}{}, services {}, pods {}",
            self.lab,
            if self.live { " (running)" } else { "" },
            self.service_cidr,
            self.overlay.network
        )
    }

    /// The router box.
    pub fn router_lines(&self) -> Vec<String> {
        vec!["router".into(), format!("kemu-{}-router", self.lab)]
    }
}

impl SegmentNode {
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!("segment {}", self.name),
            self.cidr.to_string(),
            format!("bridge br-{}", self.name),
        ]
    }
}

impl HostNode {
    /// `master+minion`, `minion`, `client`.
    pub fn role_label(&self) -> String {
        self.roles
            .iter()
            .map(|r| match r {
                Role::Master => "master",
                Role::Minion => "minion",
                Role::Client => "client",
            })
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The host's box: name, roles, address, pod subnet, proxy mode, then its pods.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            self.name.clone(),
            self.role_label(),
            format!("eth0 {}", self.ip),
        ];
        if let Some(subnet) = self.subnet {
            lines.push(format!("pods {subnet}"));
        }
        if let Some(proxy) = &self.proxy {
            lines.push(format!("proxy {proxy}"));
        }
        for p in &self.pods {
            let name = if p.namespace == "default" {
                p.name.clone()
            } else {
                format!("{}/{}", p.namespace, p.name)
            };
            lines.push(match &p.ip {
                Some(ip) => format!("- {name} {ip}"),
                None => format!("- {name}"),
            });
        }
        lines
    }

    /// The style class of the box, by its most important role.
    pub fn class(&self) -> &'static str {
        if self.roles.contains(&Role::Master) {
            "master"
        } else if self.roles.contains(&Role::Minion) {
            "minion"
        } else {
            "client"
        }
    }
}

impl Overlay {
    pub fn lines(&self) -> Vec<String> {
        let how = match self.backend {
            Backend::Vxlan => "vxlan: flannel.1, VNI 1, UDP 8472",
            Backend::HostGw => "host-gw: routes via the hosts",
        };
        vec![
            format!("overlay {}", self.network),
            how.into(),
            format!("pod MTU {}", self.pod_mtu),
        ]
    }
}

/// Fill colours by class, shared by the formats.
pub(crate) fn fill(class: &str) -> &'static str {
    match class {
        "router" => "#fde2c8",
        "segment" => "#e8e8e8",
        "master" => "#cfe2ff",
        "minion" => "#d4f0d4",
        "overlay" => "#fff4b8",
        _ => "#f4f4f4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(file: &str) -> Topology {
        let path = format!("{}/topologies/{file}", env!("CARGO_MANIFEST_DIR"));
        Topology::load(std::path::Path::new(&path)).unwrap()
    }

    /// A running seed lab as the tutorial leaves it: the nginx pods, one node switched.
    fn seed_live() -> Live {
        let pod = |name: &str, ip: &str| PodItem {
            namespace: "default".into(),
            name: name.into(),
            ip: Some(ip.into()),
        };
        Live {
            proxy: [
                ("192.168.0.201", "userspace"),
                ("192.168.0.202", "userspace->iptables"),
                ("192.168.0.203", "iptables"),
            ]
            .into_iter()
            .map(|(h, m)| (h.to_string(), m.to_string()))
            .collect(),
            pods: [
                (
                    "192.168.0.201".to_string(),
                    vec![pod("nginx-controller-wvx9g", "172.16.1.2")],
                ),
                (
                    "192.168.0.202".to_string(),
                    vec![
                        pod("nginx-controller-m68n2", "172.16.2.2"),
                        PodItem {
                            namespace: "team-a".into(),
                            name: "pending".into(),
                            ip: None,
                        },
                    ],
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn the_model_has_every_host_segment_and_the_live_facts() {
        let g = model(&topology("seed.yaml"), Some(&seed_live()));
        assert_eq!(g.segments.len(), 1);
        assert_eq!(g.hosts.len(), 4);
        let h202 = &g.hosts[1];
        assert_eq!(h202.proxy.as_deref(), Some("userspace->iptables"));
        assert_eq!(
            h202.lines(),
            [
                "192.168.0.202",
                "minion",
                "eth0 192.168.0.202",
                "pods 172.16.2.0/24",
                "proxy userspace->iptables",
                "- nginx-controller-m68n2 172.16.2.2",
                "- team-a/pending",
            ]
        );
        let client = &g.hosts[3];
        assert_eq!(client.proxy, None, "a client runs no proxy");
        assert_eq!(client.subnet, None);
        // Without a running lab: the file's proxy modes and no pods.
        let g = model(&topology("seed.yaml"), None);
        assert!(!g.live);
        assert_eq!(g.hosts[1].proxy.as_deref(), Some("userspace"));
        assert!(g.hosts.iter().all(|h| h.pods.is_empty()));
    }

    #[test]
    fn snapshots_of_every_format() {
        let settings = crate::testing::snapshot_settings();
        settings.bind(|| {
            for file in ["seed.yaml", "two-segments.yaml"] {
                let g = model(&topology(file), None);
                let stem = file.trim_end_matches(".yaml");
                insta::assert_snapshot!(format!("{stem}.dot"), dot(&g));
                insta::assert_snapshot!(format!("{stem}.mmd"), mermaid(&g));
                insta::assert_snapshot!(format!("{stem}.svg"), svg(&g));
            }
            let g = model(&topology("seed.yaml"), Some(&seed_live()));
            insta::assert_snapshot!("seed-live.mmd", mermaid(&g));
            insta::assert_snapshot!("seed-live.svg", svg(&g));
        });
    }
}
