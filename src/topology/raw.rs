//! The topology file exactly as written: serde types with `deny_unknown_fields`, every leaf
//! wrapped in `Spanned` so that `resolve` can point at the line and column of a bad value.
//! Addresses and ranges stay strings here; `resolve` parses them and names the field on error.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole topology file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTopology {
    /// Lab name; namespaces are called `kemu-<name>-<host>`.
    pub name: Spanned<String>,
    /// L2 segments of the underlay; hosts on different segments are joined by a router.
    #[serde(default)]
    pub segments: Vec<RawSegment>,
    /// The emulated machines.
    #[serde(default)]
    pub hosts: Vec<RawHost>,
    /// Service ClusterIP and NodePort ranges.
    pub services: Option<RawServices>,
    /// The pod network (flannel's net-conf.json).
    pub cluster_network: Option<RawClusterNetwork>,
    /// The service proxy.
    pub proxy: Option<RawProxy>,
    /// Underlay MTU (default 1500).
    pub mtu: Option<Spanned<u32>>,
    /// Control-plane settings.
    pub control_plane: Option<RawControlPlane>,
    /// Settings of every minion's kubelet.
    pub kubelet: Option<RawKubelet>,
}

/// `kubelet:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubelet {
    /// First delay of the container restart back-off (the kubelet's is 10s; doubles to 5m).
    pub restart_back_off: Option<Spanned<String>>,
    /// Pods a node accepts (110 like a real kubelet).
    pub max_pods: Option<Spanned<u32>>,
}

/// One L2 segment: a bridge in the fabric namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSegment {
    pub name: Spanned<String>,
    pub cidr: Spanned<String>,
    /// The router's address on this segment and the hosts' default gateway.
    pub gateway: Option<Spanned<String>>,
}

/// One emulated host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHost {
    pub name: Spanned<String>,
    pub ip: Spanned<String>,
    #[serde(default)]
    pub roles: Vec<Spanned<Role>>,
    /// Segment name; inferred from the IP when omitted.
    pub segment: Option<Spanned<String>>,
    /// Per-host override of the lab's proxy mode.
    pub proxy_mode: Option<Spanned<ProxyMode>>,
    /// Your own long-running processes on this host, supervised like kemu's agents.
    #[serde(default)]
    pub daemons: Vec<RawDaemon>,
}

/// A user process the supervisor runs (and restarts) inside a host's namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDaemon {
    pub name: Spanned<String>,
    pub command: Vec<Spanned<String>>,
}

/// What a host does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the API server, scheduler and controller-manager.
    Master,
    /// Runs the kubelet, the service proxy and the overlay agent.
    Minion,
    /// A machine outside the cluster.
    Client,
}

pub use crate::proxy::ProxyMode;

/// `services:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServices {
    #[serde(rename = "clusterIPRange")]
    pub cluster_ip_range: Spanned<String>,
    /// `30000-32767` by default.
    pub node_port_range: Option<Spanned<String>>,
}

/// `clusterNetwork:` block, flannel's `Network`, `SubnetLen` and `Backend.Type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClusterNetwork {
    pub network: Spanned<String>,
    pub subnet_len: Option<Spanned<u8>>,
    pub backend: Option<Spanned<Backend>>,
}

/// Overlay backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// flannel's vxlan backend: `flannel.1`, one route, neighbour and FDB entry per peer.
    Vxlan,
    /// flannel's host-gw backend: one route per peer via its underlay IP (needs L2 adjacency).
    HostGw,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        })
    }
}

/// `proxy:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProxy {
    pub mode: Option<Spanned<ProxyMode>>,
    /// The kube-proxy release whose behaviours to emulate, e.g. `1.31`.
    pub version: Option<Spanned<String>>,
}

/// `controlPlane:` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawControlPlane {
    /// How long a node may miss heartbeats before it turns NotReady, e.g. `8s`.
    pub node_monitor_grace_period: Option<Spanned<String>>,
    /// How long a NotReady node keeps its pods before they are evicted, e.g. `10s`.
    pub pod_eviction_timeout: Option<Spanned<String>>,
    /// Seed of the random source (ClusterIPs, NodePorts, name suffixes, proxy ports).
    pub seed: Option<Spanned<u64>>,
}
