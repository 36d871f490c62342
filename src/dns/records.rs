//! What the cluster DNS answers: the records of CoreDNS's `kubernetes` plugin (as kubeadm's
//! Corefile configures it: `pods insecure`, reverse zones, `ttl 30`) computed from Services and
//! EndpointSlices. Pure: a [`ClusterRecords`] is built from the objects, and [`ClusterRecords::answer`]
//! turns a query message into a reply (or says that the query belongs to the upstream).
//!
//! - `<svc>.<ns>.svc.<zone>`: A for a ClusterIP Service; one A per ready endpoint of a headless
//!   one (`publishNotReadyAddresses` marks them ready in the slices); CNAME for ExternalName.
//! - `<hostname>.<svc>.<ns>.svc.<zone>`: an endpoint of a headless Service, named by its
//!   `hostname` (a pod's `spec.hostname` with `spec.subdomain` = the Service) or its dashed IP.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV for named ports (the Service for a ClusterIP
//!   one, each endpoint for a headless one), with the addresses as glue.
//! - `a-b-c-d.<ns>.pod.<zone>`: the address in the name, unchecked (`pods insecure`).
//! - PTR for ClusterIPs and endpoint addresses; `dns-version.<zone>` TXT "1.0.1".
//! - A name in the zone that does not exist: NXDOMAIN; one that exists without the asked type:
//!   NOERROR and no answer; both with the zone's SOA, as CoreDNS does.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The DNS schema version of the Kubernetes DNS specification that is served.
const SCHEMA_VERSION: &str = "1.0.1";
/// TTL of `dns-version.<zone>` (CoreDNS: 28800).
const SCHEMA_TTL: u32 = 28800;

/// The cluster zone: its name, the records' TTL, and the SOA serial (CoreDNS uses the time of
/// the last change).
#[derive(Debug, Clone)]
pub struct Zone {
    pub domain: Name,
    pub ttl: u32,
    pub serial: u32,
}

impl Zone {
    /// `domain` such as `cluster.local` (a trailing dot is optional).
    pub fn new(domain: &str, ttl: u32, serial: u32) -> Result<Zone, String> {
        let mut name = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| format!("cluster domain {domain:?}: {e}"))?;
        name.set_fqdn(true);
        Ok(Zone {
            domain: name.to_lowercase(),
            ttl,
            serial,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

#[derive(Debug, Clone)]
struct NamedPort {
    name: String,
    /// `tcp`, `udp` or `sctp`.
    proto: String,
    port: u16,
}

#[derive(Debug, Clone)]
struct Endpoint {
    hostname: String,
    ips: Vec<IpAddr>,
    /// The slice's named ports (target ports), for SRV of headless Services.
    ports: Vec<NamedPort>,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    kind: Kind,
    /// The Service's named ports (service ports).
    ports: Vec<NamedPort>,
    /// Ready endpoints, in a stable order.
    endpoints: Vec<Endpoint>,
}

/// Every record of the cluster zone and its reverse zones.
#[derive(Debug, Clone)]
pub struct ClusterRecords {
    zone: Zone,
    /// (namespace, name) → the Service.
    services: BTreeMap<(String, String), ServiceEntry>,
    /// Reverse records: address → names.
    ptr: HashMap<IpAddr, Vec<Name>>,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Reply(Message),
    /// Not the cluster's: ask the upstream (or answer NXDOMAIN when there is none).
    Forward,
}

/// The dashed form of an address, as endpoint and pod names use it (`10-1-2-3`; IPv6 colons
/// become dashes, and a trailing dash gets a `0`).
pub fn dashed(ip: IpAddr) -> String {
    let s = ip.to_string().replace(['.', ':'], "-");
    if s.ends_with('-') { format!("{s}0") } else { s }
}

fn proto_label(protocol: Option<&str>) -> String {
    protocol.unwrap_or("TCP").to_ascii_lowercase()
}

impl ClusterRecords {
    /// The records of `services` and their `slices`.
    pub fn build<'a>(
        zone: Zone,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ClusterRecords {
        let mut entries = BTreeMap::new();
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let spec = svc.spec.clone().unwrap_or_default();
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                match spec.external_name.as_deref().map(Name::from_ascii) {
                    Some(Ok(mut target)) => {
                        target.set_fqdn(true);
                        Kind::ExternalName(target)
                    }
                    _ => continue,
                }
            } else if spec.cluster_ip.as_deref() == Some("None") {
                Kind::Headless
            } else {
                let ips = spec
                    .cluster_ips
                    .clone()
                    .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|ip| ip.parse().ok())
                    .collect::<Vec<IpAddr>>();
                if ips.is_empty() {
                    continue;
                }
                Kind::ClusterIp(ips)
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().filter(|n| !n.is_empty())?;
                    Some(NamedPort {
                        name,
                        proto: proto_label(p.protocol.as_deref()),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            entries.insert(
                (ns.clone(), name.clone()),
                ServiceEntry {
                    kind,
                    ports,
                    endpoints: Vec::new(),
                },
            );
        }
        for slice in slices {
            let Some(ns) = &slice.metadata.namespace else {
                continue;
            };
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            else {
                continue;
            };
            let Some(entry) = entries.get_mut(&(ns.clone(), service.clone())) else {
                continue;
            };
            let ports: Vec<NamedPort> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().filter(|n| !n.is_empty())?;
                    Some(NamedPort {
                        name,
                        proto: proto_label(p.protocol.as_deref()),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let ips: Vec<IpAddr> = ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                if !ready || ips.is_empty() {
                    continue;
                }
                let hostname = ep
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| dashed(ips[0]));
                entry.endpoints.push(Endpoint {
                    hostname,
                    ips,
                    ports: ports.clone(),
                });
            }
        }
        for entry in entries.values_mut() {
            entry
                .endpoints
                .sort_by(|a, b| (&a.hostname, &a.ips).cmp(&(&b.hostname, &b.ips)));
            entry
                .endpoints
                .dedup_by(|a, b| a.hostname == b.hostname && a.ips == b.ips);
        }
        let mut records = ClusterRecords {
            zone,
            services: entries,
            ptr: HashMap::new(),
        };
        records.ptr = records.reverse_records();
        records
    }

    fn service_name(&self, ns: &str, name: &str) -> Name {
        self.child(&[name, ns, "svc"])
    }

    /// `labels` (innermost first) under the zone.
    fn child(&self, labels: &[&str]) -> Name {
        let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .expect("labels of Kubernetes names are valid DNS labels");
        name.set_fqdn(false);
        name.append_domain(&self.zone.domain)
            .expect("a cluster name fits 255 bytes")
    }

    fn reverse_records(&self) -> HashMap<IpAddr, Vec<Name>> {
        let mut ptr: HashMap<IpAddr, Vec<Name>> = HashMap::new();
        for ((ns, name), svc) in &self.services {
            if let Kind::ClusterIp(ips) = &svc.kind {
                for ip in ips {
                    ptr.entry(*ip)
                        .or_default()
                        .push(self.service_name(ns, name));
                }
            }
            for ep in &svc.endpoints {
                for ip in &ep.ips {
                    ptr.entry(*ip)
                        .or_default()
                        .push(self.child(&[&ep.hostname, name, ns, "svc"]));
                }
            }
        }
        for names in ptr.values_mut() {
            names.sort();
            names.dedup();
        }
        ptr
    }

    fn record(&self, name: &Name, rdata: RData) -> Record {
        Record::from_rdata(name.clone(), self.zone.ttl, rdata)
    }

    fn address(&self, name: &Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(name, RData::AAAA(AAAA(v6))),
        }
    }

    fn soa(&self) -> Record {
        let zone = &self.zone.domain;
        let prefixed = |label: &str| {
            Name::from_ascii(label)
                .expect("constant label")
                .append_domain(zone)
                .expect("fits")
        };
        let mname = Name::from_ascii("ns.dns")
            .expect("constant")
            .append_domain(zone)
            .expect("fits");
        self.record(
            zone,
            RData::SOA(SOA::new(
                mname,
                prefixed("hostmaster"),
                self.zone.serial,
                7200,
                1800,
                86400,
                self.zone.ttl,
            )),
        )
    }

    /// Answer `request`: a reply for the cluster zone and the reverse zones, `Forward` for the
    /// rest.
    pub fn answer(&self, request: &Message) -> Answer {
        let mut reply = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.queries = request.queries.clone();
        if let Some(edns) = &request.edns {
            let mut ours = hickory_proto::op::Edns::new();
            ours.set_max_payload(edns.max_payload().max(512));
            reply.set_edns(ours);
        }
        let [query] = request.queries.as_slice() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Answer::Reply(reply);
        };
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            reply.metadata.response_code = ResponseCode::NotImp;
            return Answer::Reply(reply);
        }
        let name = query.name().to_lowercase();
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            return Answer::Forward;
        }
        let found = if self.zone.domain.zone_of(&name) {
            self.lookup(&name, qtype)
        } else if let Some(ip) = reverse_address(&name) {
            match self.ptr.get(&ip) {
                Some(names) => Found::Records(
                    names
                        .iter()
                        .map(|n| self.record(&name, RData::PTR(PTR(n.clone()))))
                        .collect(),
                    Vec::new(),
                ),
                None => return Answer::Forward,
            }
        } else {
            return Answer::Forward;
        };
        reply.metadata.authoritative = true;
        match found {
            Found::Records(mut answers, additionals) if !answers.is_empty() => {
                // The owner keeps the asker's spelling (resolvers may randomise the case).
                for r in &mut answers {
                    if r.name == name {
                        r.name = query.name().clone();
                    }
                }
                reply.answers = answers;
                reply.additionals = additionals;
            }
            Found::Records(..) | Found::NoData => reply.authorities = vec![self.soa()],
            Found::NxDomain => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.authorities = vec![self.soa()];
            }
        }
        Answer::Reply(reply)
    }

    /// The records of `name` (lower case, inside the zone) of type `qtype`.
    fn lookup(&self, name: &Name, qtype: RecordType) -> Found {
        let zone_labels = self.zone.domain.num_labels() as usize;
        let labels: Vec<String> = name
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let relative = &labels[..labels.len() - zone_labels];
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        match relative {
            [] => match qtype {
                RecordType::SOA => Found::Records(vec![self.soa()], Vec::new()),
                RecordType::NS => {
                    let ns = Name::from_ascii("ns.dns")
                        .expect("constant")
                        .append_domain(&self.zone.domain)
                        .expect("fits");
                    Found::Records(vec![self.record(name, RData::NS(NS(ns)))], Vec::new())
                }
                _ => Found::NoData,
            },
            [version] if version == "dns-version" => {
                if want(RecordType::TXT) {
                    let mut r =
                        self.record(name, RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])));
                    r.ttl = SCHEMA_TTL;
                    Found::Records(vec![r], Vec::new())
                } else {
                    Found::NoData
                }
            }
            // Empty non-terminals: `svc.<zone>`, `<ns>.svc.<zone>`, `pod.<zone>`, `<ns>.pod.<zone>`.
            [kind] if kind == "svc" || kind == "pod" => Found::NoData,
            [ns, kind] if kind == "svc" => {
                if self.services.keys().any(|(n, _)| n == ns) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            [_, kind] if kind == "pod" => Found::NoData,
            [svc, ns, kind] if kind == "svc" => self.service_records(name, ns, svc, qtype),
            [pod, _ns, kind] if kind == "pod" => match undashed(pod) {
                Some(ip)
                    if (ip.is_ipv4() && want(RecordType::A))
                        || (ip.is_ipv6() && want(RecordType::AAAA)) =>
                {
                    Found::Records(vec![self.address(name, ip)], Vec::new())
                }
                Some(_) => Found::NoData,
                None => Found::NxDomain,
            },
            [port, proto, svc, ns, kind]
                if kind == "svc" && port.starts_with('_') && proto.starts_with('_') =>
            {
                self.srv_records(name, ns, svc, &port[1..], &proto[1..], qtype)
            }
            [host, svc, ns, kind] if kind == "svc" => {
                let Some(entry) = self.services.get(&(ns.clone(), svc.clone())) else {
                    return Found::NxDomain;
                };
                let ips: Vec<IpAddr> = entry
                    .endpoints
                    .iter()
                    .filter(|e| e.hostname == *host)
                    .flat_map(|e| e.ips.iter().copied())
                    .collect();
                if ips.is_empty() {
                    return Found::NxDomain;
                }
                self.addresses(name, &ips, qtype)
            }
            _ => Found::NxDomain,
        }
    }

    fn addresses(&self, name: &Name, ips: &[IpAddr], qtype: RecordType) -> Found {
        let records: Vec<Record> = ips
            .iter()
            .filter(|ip| match qtype {
                RecordType::A => ip.is_ipv4(),
                RecordType::AAAA => ip.is_ipv6(),
                RecordType::ANY => true,
                _ => false,
            })
            .map(|ip| self.address(name, *ip))
            .collect();
        if records.is_empty() {
            Found::NoData
        } else {
            Found::Records(records, Vec::new())
        }
    }

    fn service_records(&self, name: &Name, ns: &str, svc: &str, qtype: RecordType) -> Found {
        let Some(entry) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return Found::NxDomain;
        };
        match &entry.kind {
            // A CNAME answers every type.
            Kind::ExternalName(target) => Found::Records(
                vec![self.record(name, RData::CNAME(CNAME(target.clone())))],
                Vec::new(),
            ),
            Kind::ClusterIp(ips) => {
                if qtype == RecordType::SRV {
                    return self.all_srv(name, ns, svc, entry);
                }
                self.addresses(name, ips, qtype)
            }
            Kind::Headless => {
                if entry.endpoints.is_empty() {
                    return Found::NxDomain;
                }
                if qtype == RecordType::SRV {
                    return self.all_srv(name, ns, svc, entry);
                }
                let ips: Vec<IpAddr> = entry
                    .endpoints
                    .iter()
                    .flat_map(|e| e.ips.iter().copied())
                    .collect();
                self.addresses(name, &ips, qtype)
            }
        }
    }

    /// SRV of the Service name itself: every named port.
    fn all_srv(&self, name: &Name, ns: &str, svc: &str, entry: &ServiceEntry) -> Found {
        let mut answers = Vec::new();
        let mut glue = Vec::new();
        for port in &entry.ports {
            if let Found::Records(a, g) = self.srv_of(name, ns, svc, entry, &port.name, &port.proto)
            {
                answers.extend(a);
                glue.extend(g);
            }
        }
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::Records(answers, glue)
        }
    }

    fn srv_records(
        &self,
        name: &Name,
        ns: &str,
        svc: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Found {
        let Some(entry) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return Found::NxDomain;
        };
        match self.srv_of(name, ns, svc, entry, port, proto) {
            Found::Records(answers, glue)
                if qtype == RecordType::SRV || qtype == RecordType::ANY =>
            {
                Found::Records(answers, glue)
            }
            Found::Records(..) => Found::NoData,
            other => other,
        }
    }

    /// SRV records of one named port, with the targets' addresses as glue.
    fn srv_of(
        &self,
        name: &Name,
        ns: &str,
        svc: &str,
        entry: &ServiceEntry,
        port: &str,
        proto: &str,
    ) -> Found {
        let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
        match &entry.kind {
            Kind::ClusterIp(ips) => {
                if let Some(p) = entry
                    .ports
                    .iter()
                    .find(|p| p.name == port && p.proto == proto)
                {
                    targets.push((p.port, self.service_name(ns, svc), ips.clone()));
                }
            }
            Kind::Headless => {
                for ep in &entry.endpoints {
                    if let Some(p) = ep.ports.iter().find(|p| p.name == port && p.proto == proto) {
                        targets.push((
                            p.port,
                            self.child(&[&ep.hostname, svc, ns, "svc"]),
                            ep.ips.clone(),
                        ));
                    }
                }
            }
            Kind::ExternalName(_) => {}
        }
        if targets.is_empty() {
            return Found::NxDomain;
        }
        // CoreDNS: priority 0, weight ⌊100 / records⌋ (at least 1).
        let weight = (100 / targets.len()).max(1) as u16;
        let mut answers = Vec::new();
        let mut glue = Vec::new();
        for (port, target, ips) in targets {
            answers.push(self.record(name, RData::SRV(SRV::new(0, weight, port, target.clone()))));
            glue.extend(ips.iter().map(|ip| self.address(&target, *ip)));
        }
        Found::Records(answers, glue)
    }
}

enum Found {
    /// Answers and additional (glue) records.
    Records(Vec<Record>, Vec<Record>),
    NoData,
    NxDomain,
}

/// The address named by a pod record's first label (`10-244-1-5`; IPv6 with dashes).
fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

/// The address of a reverse name (`5.1.244.10.in-addr.arpa.`, or a nibble `ip6.arpa.` name).
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [d, c, b, a, inaddr, arpa] if inaddr == "in-addr" && arpa == "arpa" => {
            format!("{a}.{b}.{c}.{d}")
                .parse::<Ipv4Addr>()
                .ok()
                .map(IpAddr::V4)
        }
        [nibbles @ .., ip6, arpa] if ip6 == "ip6" && arpa == "arpa" && nibbles.len() == 32 => {
            let hex: String = nibbles.iter().rev().map(String::as_str).collect();
            let value = u128::from_str_radix(&hex, 16).ok()?;
            Some(IpAddr::V6(std::net::Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

/// The reply for a query that is not the cluster's when there is no upstream: NXDOMAIN at
/// once (no five-second timeouts in pods), not authoritative.
pub fn no_upstream(request: &Message) -> Message {
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.queries = request.queries.clone();
    reply.metadata.response_code = ResponseCode::NXDomain;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
        let services = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}}),
            json!({"metadata": {"name": "db", "namespace": "prod"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "empty", "namespace": "prod"}, "spec": {"clusterIP": "None"}}),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                   "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        ];
        let slices = vec![
            json!({"metadata": {"name": "db-abc", "namespace": "prod",
                                "labels": {"kubernetes.io/service-name": "db"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                   "endpoints": [
                       {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                       {"addresses": ["10.244.2.7"], "conditions": {"ready": true}},
                       {"addresses": ["10.244.2.9"], "hostname": "db-2", "conditions": {"ready": false}}]}),
            json!({"metadata": {"name": "web-xyz", "namespace": "default",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["10.244.1.9"]}]}),
        ];
        (
            services
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect(),
            slices
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect(),
        )
    }

    fn records() -> ClusterRecords {
        let (services, slices) = objects();
        ClusterRecords::build(
            Zone::new("cluster.local", 30, 1700000000).unwrap(),
            &services,
            &slices,
        )
    }

    fn ask(records: &ClusterRecords, name: &str, qtype: RecordType) -> String {
        let mut request = Message::new(7, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        match records.answer(&request) {
            Answer::Forward => format!("{name} {qtype}: forward\n"),
            Answer::Reply(reply) => {
                let mut out = format!(
                    "{name} {qtype}: {}{}\n",
                    reply.metadata.response_code,
                    if reply.metadata.authoritative {
                        " aa"
                    } else {
                        ""
                    }
                );
                for (section, list) in [
                    ("an", &reply.answers),
                    ("ns", &reply.authorities),
                    ("ar", &reply.additionals),
                ] {
                    for r in list.iter() {
                        out.push_str(&format!("  {section} {r}\n"));
                    }
                }
                out
            }
        }
    }

    #[test]
    fn answers_as_corednss_kubernetes_plugin() {
        let r = records();
        let queries: &[(&str, RecordType)] = &[
            ("web.default.svc.cluster.local.", RecordType::A),
            ("WEB.Default.svc.cluster.local.", RecordType::A),
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ("_http._udp.web.default.svc.cluster.local.", RecordType::SRV),
            ("web.default.svc.cluster.local.", RecordType::SRV),
            ("db.prod.svc.cluster.local.", RecordType::A),
            ("db-0.db.prod.svc.cluster.local.", RecordType::A),
            ("10-244-2-7.db.prod.svc.cluster.local.", RecordType::A),
            ("db-2.db.prod.svc.cluster.local.", RecordType::A),
            ("_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV),
            ("empty.prod.svc.cluster.local.", RecordType::A),
            ("ext.default.svc.cluster.local.", RecordType::A),
            ("nope.default.svc.cluster.local.", RecordType::A),
            ("default.svc.cluster.local.", RecordType::A),
            ("nons.svc.cluster.local.", RecordType::A),
            ("10-244-3-4.default.pod.cluster.local.", RecordType::A),
            ("notanip.default.pod.cluster.local.", RecordType::A),
            ("dns-version.cluster.local.", RecordType::TXT),
            ("cluster.local.", RecordType::SOA),
            ("cluster.local.", RecordType::NS),
            ("20.0.96.10.in-addr.arpa.", RecordType::PTR),
            ("5.1.244.10.in-addr.arpa.", RecordType::PTR),
            ("1.1.1.10.in-addr.arpa.", RecordType::PTR),
            ("example.org.", RecordType::A),
        ];
        let text: String = queries.iter().map(|(n, t)| ask(&r, n, *t)).collect();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn upstreams_skip_loopback_nameservers() {
        let conf = "search .\nnameserver 127.0.0.1\nnameserver ::1\nnameserver 192.168.0.100\n";
        assert_eq!(
            crate::dns::server::upstreams_of(conf),
            vec!["192.168.0.100:53".parse::<std::net::SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn dashed_addresses() {
        assert_eq!(dashed("10.1.2.3".parse().unwrap()), "10-1-2-3");
        assert_eq!(dashed("fd00::".parse().unwrap()), "fd00--0");
        assert_eq!(undashed("10-1-2-3"), Some("10.1.2.3".parse().unwrap()));
    }
}
