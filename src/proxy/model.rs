//! The normalised service model every renderer reads: one [`ServicePort`] per port of a
//! proxied Service, its [`Endpoint`]s (matched by port *name* and protocol, as kube-proxy's
//! EndpointSliceCache does), and the [`NodeContext`] of the node the rules are for.
//!
//! The conversion follows kube-proxy (`pkg/proxy/serviceport.go`, `servicechangetracker.go`,
//! `endpointslicecache.go`, `topology.go`) including its defaults and its "sloppy" parsing of
//! IP addresses with leading zeros. Topology-aware hints are not modelled: every ready
//! endpoint is eligible on every node, which is what kube-proxy does when the endpoints carry
//! no hints.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The sticky time kube-apiserver defaults `sessionAffinityConfig.clientIP.timeoutSeconds` to.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// Layer-4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parse the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); an absent protocol means TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Protocol> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// Lower-case name, as used in rules and chain-name hashes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// IP family of a proxier instance; kube-proxy runs one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// `namespace/name:portName` plus protocol: the identity of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for the single unnamed port of a Service.
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str, protocol: Protocol) -> Self {
        ServicePortName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: port.to_owned(),
            protocol,
        }
    }

    /// `namespace/name` of the Service the port belongs to.
    pub fn service_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The 2015 spelling (`%s:%s`): the colon stays even for an unnamed port.
    pub fn legacy_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// The modern spelling used in comments and hashes: `ns/name:port`, or `ns/name` when unnamed.
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// `spec.sessionAffinity` with its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

/// One port of a proxied Service, normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// 0 when the port has no node port.
    pub node_port: u16,
    pub external_ips: Vec<IpAddr>,
    /// LB ingress IPs in VIP mode (`ipMode: Proxy` ones are left to the load balancer).
    pub load_balancer_vips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: SessionAffinity,
    /// `externalTrafficPolicy: Local` on an externally reachable Service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Only set for `type: LoadBalancer` with `externalTrafficPolicy: Local`.
    pub health_check_node_port: u16,
}

impl ServicePort {
    /// Reachable other than through the ClusterIP (NodePort, externalIP or LB IP).
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// Whether traffic is ever sent by "Cluster" policy (always, when externally reachable,
    /// because the Local short-circuit needs the cluster-wide endpoints).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    pub fn affinity_timeout(&self) -> Option<u32> {
        match self.session_affinity {
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
            SessionAffinity::None => None,
        }
    }
}

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `ip:port` (`[ip]:port` for IPv6), the form kube-proxy hashes, sorts and DNATs to.
    pub addr: String,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals the node's name).
    pub is_local: bool,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Endpoint {
        let addr = match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        Endpoint {
            ip,
            port,
            addr,
            node_name: None,
            ready: true,
            serving: true,
            terminating: false,
            is_local: false,
        }
    }
}

/// Endpoints per service port, each list sorted by `addr` (kube-proxy sorts them "to simplify
/// diffing"; the order decides the probability rules).
pub type EndpointsMap = HashMap<ServicePortName, Vec<Endpoint>>;

/// Everything about the node that changes the rules. Defaults are kube-proxy's.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeContext {
    pub node_name: String,
    /// The node's addresses; the first is "the node IP" (userspace DNAT target, LB source
    /// range check). Its family selects the proxier family.
    pub node_ips: Vec<IpAddr>,
    /// Pod network CIDR: kube-proxy's `--cluster-cidr` local-traffic detector. `None` means
    /// no detector (no masquerade rule for off-cluster ClusterIP traffic, no pod short-circuit).
    pub cluster_cidr: Option<IpNet>,
    /// `--masquerade-bit`, default 14 (mark 0x4000).
    pub masquerade_bit: u8,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--iptables-localhost-nodeports`, default true.
    pub localhost_node_ports: bool,
    /// `--nodeport-addresses`; empty means every local address.
    pub node_port_addresses: Vec<IpNet>,
    /// Service CIDRs (nftables drops traffic to unallocated ClusterIPs inside them).
    pub service_cidrs: Vec<IpNet>,
    /// Whether the iptables binary supports `--random-fully` (any iptables ≥ 1.6.2 does).
    pub random_fully: bool,
    /// Whether the nfacct counter `ct_state_invalid_dropped_pkts` exists (kube-proxy ≥ 1.30
    /// counts INVALID drops with it, but only when it could create it).
    pub nfacct_invalid_drop: bool,
    /// Whether the nfacct counter `localhost_nps_accepted_pkts` exists (≥ 1.31; without it
    /// there is no separate 127.0.0.0/8 NodePort rule).
    pub nfacct_localhost: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` != 0 (then no INVALID drop rule).
    pub conntrack_tcp_be_liberal: bool,
    /// Userspace mode: the proxy's bind address (`--bind-address`, default 0.0.0.0).
    pub proxy_bind_address: IpAddr,
}

impl NodeContext {
    pub fn new(node_name: impl Into<String>, node_ips: Vec<IpAddr>) -> NodeContext {
        NodeContext {
            node_name: node_name.into(),
            node_ips,
            cluster_cidr: None,
            masquerade_bit: 14,
            masquerade_all: false,
            localhost_node_ports: true,
            node_port_addresses: Vec::new(),
            service_cidrs: Vec::new(),
            random_fully: true,
            nfacct_invalid_drop: false,
            nfacct_localhost: false,
            conntrack_tcp_be_liberal: false,
            proxy_bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    pub fn family(&self) -> IpFamily {
        self.node_ips.first().map_or(IpFamily::V4, IpFamily::of)
    }

    pub fn node_ip(&self) -> Option<IpAddr> {
        self.node_ips.first().copied()
    }

    /// The mark as kube-proxy formats it: Go's `%#08x`, i.e. `0x00004000` for bit 14.
    pub fn masquerade_mark(&self) -> String {
        format!("0x{:08x}", 1u32 << self.masquerade_bit)
    }

    /// `--nodeport-addresses` restricted to this family; empty means "all addresses".
    pub fn node_port_cidrs(&self) -> Vec<IpNet> {
        let family = self.family();
        self.node_port_addresses
            .iter()
            .filter(|c| IpFamily::of(&c.addr()) == family)
            .copied()
            .collect()
    }

    /// kube-proxy's `NodePortAddresses.MatchAll()`.
    pub fn node_ports_match_all(&self) -> bool {
        let cidrs = self.node_port_cidrs();
        cidrs.is_empty() || cidrs.iter().any(|c| c.prefix_len() == 0)
    }

    /// Localhost NodePorts are only used for IPv4 and only when loopback may accept NodePorts.
    pub fn effective_localhost_node_ports(&self) -> bool {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let contains_loopback = self.node_ports_match_all()
            || self
                .node_port_addresses
                .iter()
                .any(|c| c.contains(&loopback));
        self.localhost_node_ports && contains_loopback && self.family() == IpFamily::V4
    }

    /// The local addresses that accept NodePorts when `--nodeport-addresses` is set: loopback
    /// first (as the `lo` interface comes first), then the node IPs.
    pub fn node_port_ips(&self) -> Vec<IpAddr> {
        let cidrs = self.node_port_cidrs();
        let candidates = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in candidates.iter().chain(self.node_ips.iter()) {
            if IpFamily::of(ip) == self.family()
                && cidrs.iter().any(|c| c.contains(ip))
                && !ips.contains(ip)
            {
                ips.push(*ip);
            }
        }
        ips
    }
}

/// Parse an IP the way Go's `netutils.ParseIPSloppy` does: IPv4 octets may carry leading zeros
/// and are read as decimal ("010" is ten).
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if text.contains(':') {
        return text.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part
            .parse::<u16>()
            .ok()
            .and_then(|v| u8::try_from(v).ok())?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parse a CIDR sloppily (see [`parse_ip_sloppy`]) and return its network, as Go's
/// `ParseCIDRSloppy` followed by `IPNet.String()` does ("10.0.0.1/8" → "10.0.0.0/8").
pub fn parse_cidr_sloppy(text: &str) -> Option<IpNet> {
    let (ip, prefix) = text.trim().split_once('/')?;
    let ip = parse_ip_sloppy(ip)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix
        .parse::<u16>()
        .ok()
        .and_then(|p| u8::try_from(p).ok())?;
    IpNet::new(ip, prefix).ok().map(|net| net.trunc())
}

/// The ClusterIP of `family`, as `GetClusterIPByFamily`: from `clusterIPs` when set, else
/// `clusterIP` when it is of that family.
fn cluster_ip_by_family(service: &Service, family: IpFamily) -> Option<IpAddr> {
    let spec = service.spec.as_ref()?;
    let candidates: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.iter().map(String::as_str).collect(),
    };
    candidates
        .into_iter()
        .filter_map(parse_ip_sloppy)
        .find(|ip| IpFamily::of(ip) == family)
}

/// Whether kube-proxy ignores the Service: headless (`clusterIP` empty or `None`) or
/// `type: ExternalName`.
pub fn should_skip_service(service: &Service) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return true;
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or("");
    ip.is_empty() || ip == "None" || spec.type_.as_deref() == Some("ExternalName")
}

/// The service ports kube-proxy's `family` proxier builds for `service` (empty when skipped).
pub fn service_ports(service: &Service, family: IpFamily) -> Vec<ServicePort> {
    if should_skip_service(service) {
        return Vec::new();
    }
    let Some(cluster_ip) = cluster_ip_by_family(service, family) else {
        return Vec::new();
    };
    let spec = service
        .spec
        .as_ref()
        .expect("checked by should_skip_service");
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or("");
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip_sloppy(ip))
        .filter(|ip| IpFamily::of(ip) == family)
        .collect();
    let externally_accessible_type = service_type == "LoadBalancer"
        || service_type == "NodePort"
        || (service_type == "ClusterIP"
            && spec.external_ips.as_ref().is_some_and(|v| !v.is_empty()));
    let external_policy_local =
        externally_accessible_type && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let session_affinity = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
        SessionAffinity::ClientIp {
            timeout_seconds: timeout,
        }
    } else {
        SessionAffinity::None
    };
    let load_balancer_source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| parse_cidr_sloppy(r))
        .filter(|net| IpFamily::of(&net.addr()) == family)
        .collect();
    let load_balancer_vips: Vec<IpAddr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|ing| ing.ip_mode.as_deref().is_none_or(|mode| mode == "VIP"))
        .filter_map(|ing| ing.ip.as_deref().and_then(parse_ip_sloppy))
        .filter(|ip| IpFamily::of(ip) == family)
        .collect();
    let health_check_node_port = if service_type == "LoadBalancer" && external_policy_local {
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    } else {
        0
    };

    spec.ports
        .iter()
        .flatten()
        .filter_map(|port| {
            let protocol = Protocol::from_k8s(port.protocol.as_deref())?;
            Some(ServicePort {
                name: ServicePortName::new(
                    namespace,
                    name,
                    port.name.as_deref().unwrap_or(""),
                    protocol,
                ),
                cluster_ip,
                port: u16::try_from(port.port).ok()?,
                node_port: port
                    .node_port
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                external_ips: external_ips.clone(),
                load_balancer_vips: load_balancer_vips.clone(),
                load_balancer_source_ranges: load_balancer_source_ranges.clone(),
                session_affinity,
                external_policy_local,
                internal_policy_local,
                health_check_node_port,
            })
        })
        .collect()
}

/// Build the endpoints map from EndpointSlices, as kube-proxy's EndpointSliceCache does:
/// slices are grouped by their `kubernetes.io/service-name` label, each slice port (by name and
/// protocol) gets every endpoint of the slice, duplicates collapse (a local copy wins) and each
/// list is sorted by `ip:port`.
pub fn endpoints_map<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
    family: IpFamily,
) -> EndpointsMap {
    let mut by_port: HashMap<ServicePortName, HashMap<String, Endpoint>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        for port in slice.ports.iter().flatten() {
            let (Some(port_name), Some(number)) = (port.name.as_deref(), port.port) else {
                continue;
            };
            let (Ok(number), Some(protocol)) = (
                u16::try_from(number),
                Protocol::from_k8s(port.protocol.as_deref()),
            ) else {
                continue;
            };
            if number == 0 {
                continue;
            }
            let key = ServicePortName::new(namespace, service, port_name, protocol);
            let set = by_port.entry(key).or_default();
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| parse_ip_sloppy(a)) else {
                    continue;
                };
                if IpFamily::of(&ip) != family {
                    continue;
                }
                let conditions = ep.conditions.as_ref();
                let mut endpoint = Endpoint::new(ip, number);
                endpoint.node_name = ep.node_name.clone();
                endpoint.is_local =
                    !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
                endpoint.ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                endpoint.serving = conditions.and_then(|c| c.serving).unwrap_or(true);
                endpoint.terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                if !set.contains_key(&endpoint.addr) || endpoint.is_local {
                    set.insert(endpoint.addr.clone(), endpoint);
                }
            }
        }
    }
    by_port
        .into_iter()
        .filter(|(_, set)| !set.is_empty())
        .map(|(key, set)| {
            let mut list: Vec<Endpoint> = set.into_values().collect();
            list.sort_by(|a, b| a.addr.cmp(&b.addr));
            (key, list)
        })
        .collect()
}

/// The endpoints of one service port as a renderer uses them (indices into the sorted
/// endpoint list), per kube-proxy's `CategorizeEndpoints`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for "Cluster" traffic policy (empty if the port never uses it).
    pub cluster: Vec<usize>,
    /// Endpoints for "Local" traffic policy (empty if the port never uses it).
    pub local: Vec<usize>,
    /// Union of the two: the endpoints that get a chain on this node, in `addr` order.
    pub reachable: Vec<usize>,
    /// Whether the port has any usable endpoint anywhere in the cluster.
    pub has_any: bool,
}

/// "Usable" means ready; when a policy has no ready endpoint it falls back to endpoints that
/// are serving and terminating.
pub fn categorize(endpoints: &[Endpoint], svc: &ServicePort) -> Categorized {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    let pick = |pred: &dyn Fn(&Endpoint) -> bool| -> Vec<usize> {
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| pred(e))
            .map(|(i, _)| i)
            .collect()
    };
    if svc.uses_cluster_endpoints() {
        out.cluster = pick(&|e| e.ready);
        if out.cluster.is_empty() {
            out.cluster = pick(&|e| e.serving && e.terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !svc.uses_local_endpoints() {
        out.reachable = out.cluster.clone();
        return out;
    }
    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for e in endpoints {
        if e.ready {
            out.has_any = true;
            local_ready |= e.is_local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_serving_terminating |= e.is_local;
        }
    }
    let mut use_serving_terminating = false;
    if local_ready {
        out.local = pick(&|e| e.is_local && e.ready);
    } else if local_serving_terminating {
        use_serving_terminating = true;
        out.local = pick(&|e| e.is_local && e.serving && e.terminating);
    }
    if !svc.uses_cluster_endpoints() {
        out.reachable = out.local.clone();
    } else if !use_serving_terminating {
        // Every ready endpoint is a cluster endpoint, so the local ones are included.
        out.reachable = out.cluster.clone();
    } else {
        // kube-proxy merges through a map (random order); we keep `addr` order.
        let mut merged: Vec<usize> = out
            .cluster
            .iter()
            .chain(out.local.iter())
            .copied()
            .collect();
        merged.sort_unstable();
        merged.dedup();
        out.reachable = merged;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_parsing_reads_leading_zeros_as_decimal() {
        assert_eq!(
            parse_ip_sloppy("172.30.0.041"),
            Some("172.30.0.41".parse().unwrap())
        );
        assert_eq!(
            parse_ip_sloppy("192.168.099.022"),
            Some("192.168.99.22".parse().unwrap())
        );
        assert_eq!(parse_ip_sloppy("1.2.3"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.256"), None);
        assert_eq!(
            parse_cidr_sloppy(" 203.0.113.000/025").unwrap().to_string(),
            "203.0.113.0/25"
        );
        assert_eq!(
            parse_cidr_sloppy("10.0.0.1/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn service_port_name_spellings() {
        let unnamed = ServicePortName::new("default", "nginx", "", Protocol::Tcp);
        assert_eq!(unnamed.to_string(), "default/nginx");
        assert_eq!(unnamed.legacy_string(), "default/nginx:");
        let named = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(named.to_string(), "ns1/svc1:p80");
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn endpoints_are_matched_by_port_name_deduplicated_and_sorted() {
        let a = slice(
            "metadata: {name: a-1, namespace: ns, labels: {kubernetes.io/service-name: a}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]\n\
             endpoints: [{addresses: [10.0.0.10]}, {addresses: [10.0.0.9], nodeName: me}]\n",
        );
        // The same address in a second slice, this time local: the local copy wins.
        let b = slice(
            "metadata: {name: a-2, namespace: ns, labels: {kubernetes.io/service-name: a}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}]\n\
             endpoints: [{addresses: [10.0.0.10], nodeName: me}, {addresses: [fd00::1]}]\n",
        );
        let map = endpoints_map(&[a, b], "me", IpFamily::V4);
        let http = &map[&ServicePortName::new("ns", "a", "http", Protocol::Tcp)];
        let addrs: Vec<&str> = http.iter().map(|e| e.addr.as_str()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.10:8080", "10.0.0.9:8080"],
            "sorted as strings, like kube-proxy"
        );
        assert!(http.iter().all(|e| e.is_local));
        let dns = &map[&ServicePortName::new("ns", "a", "dns", Protocol::Udp)];
        assert_eq!(dns.len(), 2);
        assert!(!map.contains_key(&ServicePortName::new("ns", "a", "http", Protocol::Udp)));
    }

    fn port(external_local: bool, internal_local: bool, node_port: u16) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns", "s", "", Protocol::Tcp),
            cluster_ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            node_port,
            external_ips: vec![],
            load_balancer_vips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: SessionAffinity::None,
            external_policy_local: external_local,
            internal_policy_local: internal_local,
            health_check_node_port: 0,
        }
    }

    fn ep(ip: &str, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        let mut e = Endpoint::new(ip.parse().unwrap(), 80);
        e.is_local = local;
        e.ready = ready;
        e.serving = serving;
        e.terminating = terminating;
        e
    }

    #[test]
    fn categorize_follows_kube_proxy() {
        let eps = [
            ep("10.0.0.1", false, true, true, false),
            ep("10.0.0.2", true, false, true, true),
        ];
        // Cluster policy: only the ready endpoint.
        let c = categorize(&eps, &port(false, false, 0));
        assert_eq!(
            (
                c.cluster.as_slice(),
                c.local.as_slice(),
                c.reachable.as_slice(),
                c.has_any
            ),
            (&[0][..], &[][..], &[0][..], true)
        );
        // eTP Local on a NodePort: no ready local endpoint, so the serving+terminating local one
        // is used for Local, and the reachable set is the union.
        let c = categorize(&eps, &port(true, false, 30000));
        assert_eq!(
            (
                c.cluster.as_slice(),
                c.local.as_slice(),
                c.reachable.as_slice()
            ),
            (&[0][..], &[1][..], &[0, 1][..])
        );
        // iTP Local on a ClusterIP-only port never uses cluster endpoints.
        let c = categorize(&eps, &port(false, true, 0));
        assert_eq!(
            (
                c.cluster.as_slice(),
                c.local.as_slice(),
                c.reachable.as_slice(),
                c.has_any
            ),
            (&[][..], &[1][..], &[1][..], true)
        );
        // Nothing ready or serving: no endpoints anywhere.
        let none = [ep("10.0.0.3", true, false, false, true)];
        assert!(!categorize(&none, &port(false, false, 0)).has_any);
    }

    #[test]
    fn services_skip_headless_and_apply_defaults() {
        let svc: Service = serde_saphyr::from_str(
            "metadata: {name: s, namespace: ns}\n\
             spec: {type: LoadBalancer, clusterIP: 10.96.0.5, externalTrafficPolicy: Local, healthCheckNodePort: 31000,\n\
               sessionAffinity: ClientIP, ports: [{port: 80, nodePort: 30080}, {name: u, port: 53, protocol: UDP}]}\n\
             status: {loadBalancer: {ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8, ipMode: Proxy}, {hostname: lb.example}]}}\n",
        )
        .unwrap();
        let ports = service_ports(&svc, IpFamily::V4);
        assert_eq!(ports.len(), 2);
        assert_eq!(
            ports[0].session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: 10800
            }
        );
        assert_eq!(
            ports[0].load_balancer_vips,
            vec!["1.2.3.4".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(ports[0].health_check_node_port, 31000);
        assert!(ports[0].external_policy_local);
        assert_eq!(ports[1].name.protocol, Protocol::Udp);
        assert!(service_ports(&svc, IpFamily::V6).is_empty());
        let headless: Service = serde_saphyr::from_str(
            "metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 1}]}\n",
        )
        .unwrap();
        assert!(service_ports(&headless, IpFamily::V4).is_empty());
    }

    #[test]
    fn masquerade_mark_is_formatted_like_go() {
        let node = NodeContext::new("n", vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(node.masquerade_mark(), "0x00004000");
    }
}
