//! The topology file: what a lab is made of.
//!
//! `raw` holds the serde types exactly as written, `resolve` validates them and produces the
//! `Topology` below (every error names file, line, column and field), `generate` writes N-host
//! topologies. Nothing here touches the kernel.

mod error;
pub mod generate;
pub mod name;
pub mod raw;
mod resolve;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use error::{Problem, TopologyError};
pub use name::{LabName, LabNameError, MAX_LAB_NAME};
pub use raw::{Backend, ProxyMode, Role, RuntimeKind};
pub use resolve::{parse, parse_duration};

/// `parse_duration` for clap: `8s`, `500ms`, `2m`.
pub fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 500ms, 8s or 2m"))
}

/// A validated, resolved lab description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub name: LabName,
    pub segments: Vec<Segment>,
    pub hosts: Vec<Host>,
    pub service_cidr: Ipv4Net,
    pub node_port_range: PortRange,
    pub cluster_network: ClusterNetwork,
    /// Lab-wide proxy mode; each host carries its effective mode.
    pub proxy_mode: ProxyMode,
    /// The kube-proxy release the proxies emulate (`proxy.version`); kemu's own profile
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<crate::proxy::profile::KubeVersion>,
    pub mtu: u32,
    pub control_plane: ControlPlane,
    #[serde(default)]
    pub kubelet: KubeletSettings,
    /// Lab-wide container runtime; each host carries its effective one.
    #[serde(default, skip_serializing_if = "RuntimeKind::is_process")]
    pub runtime: RuntimeKind,
    #[serde(default)]
    pub dns: DnsSettings,
}

/// Cluster DNS (`dns:`); a lab recorded before it existed has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsSettings {
    pub enabled: bool,
    pub cluster_domain: String,
    /// Lab hosts that answer names outside the cluster.
    pub upstream: Vec<Ipv4Addr>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            enabled: false,
            cluster_domain: "cluster.local".into(),
            upstream: Vec::new(),
        }
    }
}

impl Topology {
    /// The `kube-dns` Service's ClusterIP: the tenth address of the service range, as kubeadm
    /// gives it (`None` when the lab has no cluster DNS).
    pub fn dns_service_ip(&self) -> Option<Ipv4Addr> {
        self.dns
            .enabled
            .then(|| Ipv4Addr::from(u32::from(self.service_cidr.network()) + 10))
    }
}

/// Settings of every minion's kubelet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletSettings {
    pub restart_back_off: Duration,
    pub max_pods: u32,
}

impl Default for KubeletSettings {
    fn default() -> Self {
        KubeletSettings {
            restart_back_off: Duration::from_secs(10),
            max_pods: 110,
        }
    }
}

/// An L2 segment of the underlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub cidr: Ipv4Net,
    /// The router's address here, and every host's default gateway.
    pub gateway: Ipv4Addr,
}

/// One emulated machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub segment: String,
    pub roles: Vec<Role>,
    /// The pod subnet leased to a minion.
    pub subnet: Option<Ipv4Net>,
    /// Effective proxy mode (the lab's unless overridden).
    pub proxy_mode: ProxyMode,
    /// Effective container runtime (the lab's unless overridden).
    #[serde(default, skip_serializing_if = "RuntimeKind::is_process")]
    pub runtime: RuntimeKind,
    /// User processes the supervisor runs on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemons: Vec<Daemon>,
}

/// A user process run (and restarted) by the supervisor inside a host's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    pub name: String,
    pub command: Vec<String>,
}

impl Host {
    pub fn is_master(&self) -> bool {
        self.roles.contains(&Role::Master)
    }
    pub fn is_minion(&self) -> bool {
        self.roles.contains(&Role::Minion)
    }
    pub fn is_client(&self) -> bool {
        self.roles.contains(&Role::Client)
    }
    /// Roles as the seed's kube-up config wrote them: `a`, `i`, `ai`, or `client`.
    pub fn role_label(&self) -> String {
        let names: Vec<&str> = self
            .roles
            .iter()
            .map(|r| match r {
                Role::Master => "master",
                Role::Minion => "minion",
                Role::Client => "client",
            })
            .collect();
        names.join("+")
    }
}

/// An inclusive port range such as 30000-32767.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Parse `30000-32767`.
    pub fn parse(text: &str) -> Option<PortRange> {
        let (a, b) = text.trim().split_once('-')?;
        let first: u16 = a.trim().parse().ok()?;
        let last: u16 = b.trim().parse().ok()?;
        (first >= 1 && first <= last).then_some(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// flannel's network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub backend: Backend,
}

/// Control-plane timing and the random seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    pub node_monitor_grace_period: Duration,
    pub pod_eviction_timeout: Duration,
    /// Seed of the random source; `None` means a fresh one per `up`.
    pub seed: Option<u64>,
}

impl Topology {
    /// Read and resolve a topology file.
    pub fn load(path: &Path) -> anyhow::Result<Topology> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read topology file {}: {e}", path.display()))?;
        Ok(parse(&path.display().to_string(), &source)?)
    }

    /// The namespace of a host: `kemu-<lab>-<host>`.
    pub fn host_namespace(&self, host: &Host) -> String {
        format!("kemu-{}-{}", self.name, host.name)
    }

    /// The namespace holding the underlay bridges.
    pub fn fabric_namespace(&self) -> String {
        format!("kemu-{}-fabric", self.name)
    }

    /// The namespace of the router that joins the segments (and is their default gateway).
    pub fn router_namespace(&self) -> String {
        format!("kemu-{}-router", self.name)
    }

    /// The master host (validation guarantees exactly one).
    pub fn master(&self) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.is_master())
            .expect("validated: one master")
    }

    /// Hosts running the node agents.
    pub fn minions(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.is_minion())
    }

    /// A host by name or underlay IP.
    pub fn find_host(&self, key: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == key)
            .or_else(|| self.hosts.iter().find(|h| h.ip.to_string() == key))
    }

    /// The segment a host is on.
    pub fn segment_of(&self, host: &Host) -> &Segment {
        self.segments
            .iter()
            .find(|s| s.name == host.segment)
            .expect("validated: host segment exists")
    }

    /// MTU of the pod network: the underlay's minus VXLAN's 50 bytes of overhead.
    pub fn pod_mtu(&self) -> u32 {
        match self.cluster_network.backend {
            Backend::Vxlan => self.mtu - 50,
            Backend::HostGw => self.mtu,
        }
    }

    /// The first address of the service range: the `kubernetes` Service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1)
    }
}
