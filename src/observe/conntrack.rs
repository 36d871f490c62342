//! `kemu conntrack`: a host's conntrack table, read through netfilter netlink
//! ([`crate::proxy::nfnetlink::Nfnl::dump`]) and shown entry by entry with the NAT it did,
//! optionally only the entries of one Service: to its ClusterIPs, external IPs and load
//! balancer IPs on its ports, to its node ports, and to or from its endpoints.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple as NlTuple,
};
use serde::Serialize;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports (0 for protocols without them).
    pub sport: u16,
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sport == 0 && self.dport == 0 {
            write!(f, "{} -> {}", self.src, self.dst)
        } else {
            write!(
                f,
                "{}:{} -> {}:{}",
                self.src, self.sport, self.dst, self.dport
            )
        }
    }
}

/// One conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `tcp`, `udp`, `icmp`, `sctp` or the protocol number.
    pub protocol: String,
    /// The TCP state (`ESTABLISHED`, `TIME_WAIT` ...); none for other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Seconds left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    pub original: Tuple,
    pub reply: Tuple,
    /// `ASSURED`, `SEEN_REPLY`, `UNREPLIED` (no reply seen), `DNAT`, `SNAT`.
    pub flags: Vec<String>,
    pub mark: u32,
}

impl Entry {
    /// Where a destination NAT sent the connection (the reply comes from there).
    pub fn dnat_to(&self) -> Option<(IpAddr, u16)> {
        (self.reply.src != self.original.dst || self.reply.sport != self.original.dport)
            .then_some((self.reply.src, self.reply.sport))
    }

    /// The address a source NAT gave the connection (the reply goes there).
    pub fn snat_to(&self) -> Option<(IpAddr, u16)> {
        (self.reply.dst != self.original.src || self.reply.dport != self.original.sport)
            .then_some((self.reply.dst, self.reply.dport))
    }
}

/// `enum tcp_conntrack` of `include/uapi/linux/netfilter/nf_conntrack_tcp.h`.
const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn tuple(parts: &[NlTuple]) -> (Option<IpAddr>, Option<IpAddr>, Option<u8>, u16, u16) {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for part in parts {
        match part {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(fields) => {
                for f in fields {
                    match f {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (src, dst, proto, sport, dport)
}

/// An entry from the attributes of a dumped conntrack message (`None` without both tuples).
pub fn parse(attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut orig, mut reply, mut state, mut timeout, mut mark, mut status) =
        (None, None, None, None, 0, 0u32);
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(tuple(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple(t)),
            ConntrackAttribute::CtaTimeout(t) => timeout = Some(*t),
            ConntrackAttribute::CtaMark(m) => mark = *m,
            ConntrackAttribute::CtaStatus(s) => status = s.bits(),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for info in infos {
                    if let ProtoInfo::TCP(fields) = info {
                        for f in fields {
                            if let ProtoInfoTCP::State(s) = f {
                                state = Some(
                                    TCP_STATES
                                        .get(*s as usize)
                                        .map_or_else(|| s.to_string(), |n| n.to_string()),
                                );
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(osrc), Some(odst), Some(proto), osport, odport) = orig? else {
        return None;
    };
    let (Some(rsrc), Some(rdst), _, rsport, rdport) = reply? else {
        return None;
    };
    let mut flags = Vec::new();
    // `IPS_SEEN_REPLY`, `IPS_ASSURED`, `IPS_SRC_NAT`, `IPS_DST_NAT` (nf_conntrack_common.h).
    if status & (1 << 1) == 0 {
        flags.push("UNREPLIED".to_string());
    }
    if status & (1 << 2) != 0 {
        flags.push("ASSURED".to_string());
    }
    let entry = Entry {
        protocol: protocol_name(proto),
        state,
        timeout,
        original: Tuple {
            src: osrc,
            dst: odst,
            sport: osport,
            dport: odport,
        },
        reply: Tuple {
            src: rsrc,
            dst: rdst,
            sport: rsport,
            dport: rdport,
        },
        flags,
        mark,
    };
    let mut entry = entry;
    if entry.dnat_to().is_some() {
        entry.flags.push("DNAT".into());
    }
    if entry.snat_to().is_some() {
        entry.flags.push("SNAT".into());
    }
    Some(entry)
}

/// What belongs to one Service: its addresses and ports, node ports and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFilter {
    /// ClusterIPs, external IPs and load balancer IPs.
    pub ips: BTreeSet<IpAddr>,
    /// (protocol, port) of its ports.
    pub ports: BTreeSet<(String, u16)>,
    /// (protocol, node port).
    pub node_ports: BTreeSet<(String, u16)>,
    /// Its endpoints' addresses.
    pub endpoints: BTreeSet<IpAddr>,
}

impl ServiceFilter {
    /// The filter of `service`, with the endpoints of its EndpointSlices among `slices`.
    pub fn of(service: &Service, slices: &[EndpointSlice]) -> ServiceFilter {
        let mut f = ServiceFilter::default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(spec) = &service.spec {
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .chain(spec.external_ips.iter().flatten());
            f.ips.extend(ips.filter_map(|ip| ip.parse::<IpAddr>().ok()));
            for port in spec.ports.iter().flatten() {
                let proto = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
                f.ports.insert((proto.clone(), port.port as u16));
                if let Some(np) = port.node_port {
                    f.node_ports.insert((proto, np as u16));
                }
            }
        }
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        f.ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()),
        );
        for slice in slices {
            let owned = slice.metadata.namespace.as_deref() == Some(namespace)
                && slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == name);
            if owned {
                f.endpoints.extend(
                    slice
                        .endpoints
                        .iter()
                        .flat_map(|e| &e.addresses)
                        .filter_map(|a| a.parse::<IpAddr>().ok()),
                );
            }
        }
        f
    }

    /// Whether an entry belongs to the Service.
    pub fn matches(&self, e: &Entry) -> bool {
        let key = |port: u16| (e.protocol.clone(), port);
        (self.ips.contains(&e.original.dst) && self.ports.contains(&key(e.original.dport)))
            || self.node_ports.contains(&key(e.original.dport))
            || self.endpoints.contains(&e.original.dst)
            || self.endpoints.contains(&e.reply.src)
    }
}

/// The entries in a stable order: protocol, original tuple.
pub fn sort(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        (&a.protocol, a.original, a.reply).cmp(&(&b.protocol, b.original, b.reply))
    });
}

/// The entries as a table, one line each, then a count.
pub fn render(entries: &[Entry]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let nat = match (e.dnat_to(), e.snat_to()) {
                (Some((ip, port)), None) => format!("dnat {ip}:{port}"),
                (None, Some((ip, port))) => format!("snat {ip}:{port}"),
                (Some((d, dp)), Some((s, sp))) => format!("dnat {d}:{dp}, snat {s}:{sp}"),
                (None, None) => "-".into(),
            };
            let flags: Vec<&str> = e
                .flags
                .iter()
                .map(String::as_str)
                .filter(|f| *f != "DNAT" && *f != "SNAT")
                .collect();
            [
                e.protocol.clone(),
                e.state.clone().unwrap_or_else(|| "-".into()),
                e.timeout.map_or_else(|| "-".into(), |t| t.to_string()),
                e.original.to_string(),
                nat,
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
            ]
        })
        .collect();
    let header = ["PROTO", "STATE", "TIMEOUT", "ORIGINAL", "NAT", "FLAGS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    let _ = writeln!(out, "{} entries", entries.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::conntrack::{Protocol, Status};
    use serde_json::json;

    fn nl_tuple(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Vec<NlTuple> {
        vec![
            NlTuple::Ip(vec![
                IPTuple::SourceAddress(src.parse().unwrap()),
                IPTuple::DestinationAddress(dst.parse().unwrap()),
            ]),
            NlTuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::from(proto)),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// A TCP connection from a pod to a ClusterIP, DNATed to an endpoint.
    fn clusterip_flow() -> Vec<ConntrackAttribute> {
        vec![
            ConntrackAttribute::CtaTupleOrig(nl_tuple(
                "172.16.2.2",
                "192.168.3.91",
                6,
                40000,
                8001,
            )),
            ConntrackAttribute::CtaTupleReply(nl_tuple("172.16.1.2", "172.16.2.2", 6, 80, 40000)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(0b10_1110)),
            ConntrackAttribute::CtaTimeout(431999),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(3)])]),
        ]
    }

    fn entries() -> Vec<Entry> {
        let nodeport = vec![
            ConntrackAttribute::CtaTupleOrig(nl_tuple(
                "192.168.0.100",
                "192.168.0.201",
                17,
                5353,
                30053,
            )),
            ConntrackAttribute::CtaTupleReply(nl_tuple("172.16.2.3", "172.16.1.0", 17, 53, 5353)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(0b11_1000)),
            ConntrackAttribute::CtaTimeout(29),
        ];
        let plain = vec![
            ConntrackAttribute::CtaTupleOrig(nl_tuple(
                "192.168.0.202",
                "192.168.0.201",
                6,
                51000,
                8080,
            )),
            ConntrackAttribute::CtaTupleReply(nl_tuple(
                "192.168.0.201",
                "192.168.0.202",
                6,
                8080,
                51000,
            )),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(0b1110)),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(3)])]),
        ];
        let mut out: Vec<Entry> = [clusterip_flow(), nodeport, plain]
            .iter()
            .filter_map(|a| parse(a))
            .collect();
        sort(&mut out);
        out
    }

    #[test]
    fn entries_show_their_nat_state_and_flags() {
        let e = parse(&clusterip_flow()).unwrap();
        assert_eq!(e.state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(e.dnat_to(), Some(("172.16.1.2".parse().unwrap(), 80)));
        assert_eq!(e.snat_to(), None);
        assert_eq!(e.flags, ["ASSURED", "DNAT"]);
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(render(&entries())));
    }

    #[test]
    fn a_service_filter_keeps_its_ips_node_ports_and_endpoints() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "192.168.3.91", "ports": [{"port": 8001, "nodePort": 30053, "protocol": "UDP"}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["172.16.1.2"]}]
        }))
        .unwrap();
        let other: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["172.16.2.3"]}]
        }))
        .unwrap();
        let f = ServiceFilter::of(&svc, &[slice, other]);
        let kept: Vec<String> = entries()
            .iter()
            .filter(|e| f.matches(e))
            .map(|e| e.original.to_string())
            .collect();
        // The TCP flow to the ClusterIP goes to an endpoint of the service; the UDP flow to the
        // node port (UDP) matches its node port; the flow between hosts matches nothing.
        assert_eq!(
            kept,
            [
                "172.16.2.2:40000 -> 192.168.3.91:8001",
                "192.168.0.100:5353 -> 192.168.0.201:30053"
            ]
        );
    }
}
