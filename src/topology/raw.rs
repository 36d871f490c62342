//! The topology file exactly as written: serde types with `deny_unknown_fields`, every leaf
//! wrapped in `Spanned` so that `resolve` can point at the line and column of a bad value.
//! Addresses and ranges stay strings here; `resolve` parses them and names the field on error.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole topology file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTopology {
    /// Lab name; namespaces are called `kemu-<name>-<host>`.
    #[schemars(with = "String")]
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
    /// Underlay MTU, 576 to 9000 (default 1500); vxlan pods get 50 bytes less.
    #[schemars(with = "Option<u32>")]
    pub mtu: Option<Spanned<u32>>,
    /// Control-plane settings.
    pub control_plane: Option<RawControlPlane>,
    /// Settings of every minion's kubelet.
    pub kubelet: Option<RawKubelet>,
    /// Container runtime of every minion without a `runtime` of its own: `process` (default)
    /// or `docker` (the local Docker engine's images; see the README's "Docker runtime").
    #[schemars(with = "Option<RuntimeKind>")]
    pub runtime: Option<Spanned<RuntimeKind>>,
    /// Cluster DNS (on by default).
    pub dns: Option<RawDns>,
}

/// `dns:` block.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDns {
    /// Run the cluster DNS (`kube-dns` Service at the service range's tenth address, CoreDNS pods in `kube-system`) and point pods at it (default `true`).
    #[schemars(with = "Option<bool>")]
    pub enabled: Option<Spanned<bool>>,
    /// The cluster domain (default `cluster.local`).
    #[schemars(with = "Option<String>")]
    pub cluster_domain: Option<Spanned<String>>,
    /// Nameservers for names outside the cluster: addresses of this lab's own hosts (for example a client running a DNS daemon). Without one, such names get NXDOMAIN at once.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub upstream: Vec<Spanned<String>>,
}

/// `kubelet:` block.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubelet {
    /// First delay of the container restart back-off (the kubelet's is 10s; doubles to 5m).
    #[schemars(with = "Option<String>")]
    pub restart_back_off: Option<Spanned<String>>,
    /// Pods a node accepts (110 like a real kubelet).
    #[schemars(with = "Option<u32>")]
    pub max_pods: Option<Spanned<u32>>,
}

/// One L2 segment: a bridge in the fabric namespace.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSegment {
    /// Segment name, at most 12 characters (the bridge is `br-<name>`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The segment's IPv4 network, e.g. `192.168.0.0/24`.
    #[schemars(with = "String")]
    pub cidr: Spanned<String>,
    /// The router's address on this segment and the hosts' default gateway (default: the
    /// segment's first address).
    #[schemars(with = "Option<String>")]
    pub gateway: Option<Spanned<String>>,
}

/// One emulated host.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHost {
    /// Host and node name (a DNS subdomain, at most 63 characters).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Underlay IPv4 address; the segment is inferred from it.
    #[schemars(with = "String")]
    pub ip: Spanned<String>,
    /// `[master]`, `[minion]`, `[master, minion]`, or `[client]` for a machine outside the
    /// cluster.
    #[serde(default)]
    #[schemars(with = "Vec<Role>")]
    pub roles: Vec<Spanned<Role>>,
    /// Segment name; inferred from the IP when omitted.
    #[schemars(with = "Option<String>")]
    pub segment: Option<Spanned<String>>,
    /// Per-host override of the lab's proxy mode.
    #[schemars(with = "Option<ProxyMode>")]
    pub proxy_mode: Option<Spanned<ProxyMode>>,
    /// Per-host override of the lab's container runtime.
    #[schemars(with = "Option<RuntimeKind>")]
    pub runtime: Option<Spanned<RuntimeKind>>,
    /// Your own long-running processes on this host, supervised like kemu's agents.
    #[serde(default)]
    pub daemons: Vec<RawDaemon>,
}

/// A user process the supervisor runs (and restarts) inside a host's namespace.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDaemon {
    /// Daemon name, unique on its host (its log is `logs/<host>/<name>.log`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The program and its arguments.
    #[schemars(with = "Vec<String>")]
    pub command: Vec<Spanned<String>>,
}

/// What a host does in the cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
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
pub use crate::runtime::RuntimeKind;

/// `services:` block.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServices {
    /// Service ClusterIPs; the `kubernetes` Service gets the first address.
    #[serde(rename = "clusterIPRange")]
    #[schemars(with = "String")]
    pub cluster_ip_range: Spanned<String>,
    /// `30000-32767` by default.
    #[schemars(with = "Option<String>")]
    pub node_port_range: Option<Spanned<String>>,
}

/// `clusterNetwork:` block, flannel's `Network`, `SubnetLen` and `Backend.Type`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClusterNetwork {
    /// The pod network, cut into one subnet per minion, e.g. `172.16.0.0/16`.
    #[schemars(with = "String")]
    pub network: Spanned<String>,
    /// Prefix length of each minion's pod subnet (default 24, or the network's prefix + 2 for
    /// small networks).
    #[schemars(with = "Option<u8>")]
    pub subnet_len: Option<Spanned<u8>>,
    /// Overlay backend (default `vxlan`).
    #[schemars(with = "Option<Backend>")]
    pub backend: Option<Spanned<Backend>>,
}

/// Overlay backend.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProxy {
    /// Proxy mode of every host without a `proxyMode` of its own (default `iptables`).
    #[schemars(with = "Option<ProxyMode>")]
    pub mode: Option<Spanned<ProxyMode>>,
    /// The kube-proxy release whose behaviours to emulate, e.g. `1.31`.
    #[schemars(with = "Option<String>")]
    pub version: Option<Spanned<String>>,
}

/// `controlPlane:` block.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawControlPlane {
    /// How long a node may miss heartbeats before it turns NotReady, e.g. `8s`.
    #[schemars(with = "Option<String>")]
    pub node_monitor_grace_period: Option<Spanned<String>>,
    /// How long a NotReady node keeps its pods before they are evicted, e.g. `10s`.
    #[schemars(with = "Option<String>")]
    pub pod_eviction_timeout: Option<Spanned<String>>,
    /// Seed of the random source (ClusterIPs, NodePorts, name suffixes, proxy ports).
    #[schemars(with = "Option<u64>")]
    pub seed: Option<Spanned<u64>>,
}
