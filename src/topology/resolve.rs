//! Validation and resolution: a `RawTopology` becomes a `Topology` with parsed addresses,
//! inferred segments, defaults applied and pod subnets leased. Every check happens here, before
//! anything touches the kernel, and every problem names its line, column and field.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_saphyr::{Location, Spanned};

use super::error::{Problem, TopologyError};
use super::name::LabName;
use super::raw::{Backend, ProxyMode, RawHost, RawTopology, Role, RuntimeKind};
use super::{
    ClusterNetwork, ControlPlane, Daemon, DnsSettings, Host, KubeletSettings, PortRange, Segment,
    Topology,
};

use crate::proxy::profile::{KubeVersion, ProxyProfile};

/// Longest host name: a Kubernetes label value (`kubernetes.io/hostname`) and a UTS hostname.
pub const MAX_HOST_NAME: usize = 63;
/// Longest segment name: the fabric bridge `br-<segment>` and the router leg `to-<segment>`
/// must fit the kernel's 15-byte interface names (IFNAMSIZ).
pub const MAX_SEGMENT_NAME: usize = 12;
/// Longest network namespace name (a file name under /run/netns).
pub const MAX_NAMESPACE_NAME: usize = 255;

/// Parse and resolve a topology file. `file` is used in error messages only.
pub fn parse(file: &str, source: &str) -> Result<Topology, TopologyError> {
    let fail = |problems| TopologyError {
        file: file.to_string(),
        source: source.to_string(),
        problems,
    };
    let mut path = String::new();
    let raw: RawTopology = serde_saphyr::with_deserializer_from_str(source, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| fail(vec![parse_problem(&e, &path)]))?;
    resolve(raw).map_err(fail)
}

/// Turn a YAML/serde error into a problem with the field path serde_path_to_error tracked.
fn parse_problem(err: &serde_saphyr::Error, path: &str) -> Problem {
    let field = path.trim_end_matches(".value");
    let field = if field.is_empty() || field == "." {
        "(top level)"
    } else {
        field
    };
    let mut message = err.without_snippet().to_string();
    // saphyr appends its own " at line L, column C"; we print the location ourselves.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    let (line, column) = err
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    Problem {
        line,
        column,
        field: field.to_string(),
        message,
    }
}

/// Collects problems while resolving, so one run reports all of them.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, at: Location, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::at(at, field, message));
    }

    fn ipv4(&mut self, value: &Spanned<String>, field: &str) -> Option<Ipv4Addr> {
        match value.value.trim().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.report(
                    value.referenced,
                    field,
                    format!("{:?} is not an IPv4 address", value.value),
                );
                None
            }
        }
    }

    fn cidr(&mut self, value: &Spanned<String>, field: &str) -> Option<Ipv4Net> {
        match value.value.trim().parse::<Ipv4Net>() {
            Ok(net) if net.network() == net.addr() => Some(net),
            Ok(net) => {
                self.report(
                    value.referenced,
                    field,
                    format!(
                        "{} has host bits set: did you mean {}?",
                        value.value,
                        net.trunc()
                    ),
                );
                None
            }
            Err(_) => {
                self.report(
                    value.referenced,
                    field,
                    format!(
                        "{:?} is not an IPv4 CIDR such as 192.168.0.0/24",
                        value.value
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Spanned<String>, field: &str) -> Option<Duration> {
        match parse_duration(&value.value) {
            Some(d) => Some(d),
            None => {
                self.report(
                    value.referenced,
                    field,
                    format!(
                        "{:?} is not a duration such as 500ms, 8s or 2m",
                        value.value
                    ),
                );
                None
            }
        }
    }
}

/// `500ms`, `8s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_dns_label)
}

/// Name checks that do not depend on anything else: the one lab-name rule (`super::name`).
fn check_lab_name(c: &mut Checker, name: &Spanned<String>) {
    if let Some(problem) = super::name::lab_name_problem(&name.value) {
        c.report(name.referenced, "name", problem);
    }
}

/// Resolve a parsed file into a `Topology`, or every problem found. Each part of the file is
/// checked by its own function below; all of them report into one `Checker`, so that a file
/// with several mistakes gets them all at once.
pub fn resolve(raw: RawTopology) -> Result<Topology, Vec<Problem>> {
    let mut c = Checker::default();
    check_lab_name(&mut c, &raw.name);
    let segments = resolve_segments(&mut c, &raw);
    let ranges = resolve_ranges(&mut c, &raw);
    check_range_overlaps(&mut c, &raw, &ranges, &segments);
    let mtu = resolve_mtu(&mut c, &raw);
    let (proxy_version, proxy_mode) = resolve_proxy(&mut c, &raw);
    let runtime = raw.runtime.as_ref().map(|r| r.value).unwrap_or_default();
    let mut hosts = resolve_hosts(&mut c, &raw, &segments, proxy_mode, runtime);
    lease_pod_subnets(&mut c, &raw, &ranges, &mut hosts);
    let control_plane = resolve_control_plane(&mut c, &raw);
    let kubelet = resolve_kubelet(&mut c, &raw);
    let dns = resolve_dns(&mut c, &raw, &ranges, &hosts);

    if !c.problems.is_empty() {
        c.problems.sort_by_key(|p| (p.line, p.column));
        return Err(c.problems);
    }
    Ok(Topology {
        name: LabName::parse(&raw.name.value).expect("checked by check_lab_name"),
        segments,
        hosts,
        service_cidr: ranges.service_cidr.expect("checked"),
        node_port_range: ranges.node_port_range.expect("checked"),
        cluster_network: ClusterNetwork {
            network: ranges.network.expect("checked"),
            subnet_len: ranges.subnet_len.expect("checked"),
            backend: ranges.backend,
        },
        proxy_mode,
        proxy_version,
        mtu,
        control_plane,
        kubelet,
        runtime,
        dns,
    })
}

/// `segments:`: names, CIDRs, gateways, and no two overlapping.
fn resolve_segments(c: &mut Checker, raw: &RawTopology) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut segment_at: Vec<Location> = Vec::new();
    if raw.segments.is_empty() {
        c.report(
            raw.name.referenced,
            "segments",
            "a lab needs at least one underlay segment, e.g. `segments: [{name: lan, cidr: 192.168.0.0/24}]`",
        );
    }
    let mut seen_segments = HashSet::new();
    for (i, s) in raw.segments.iter().enumerate() {
        let field = format!("segments[{i}]");
        let name = &s.name.value;
        if name.len() > MAX_SEGMENT_NAME {
            c.report(
                s.name.referenced,
                format!("{field}.name"),
                format!(
                    "segment name {name:?} is {} characters long; the limit is {MAX_SEGMENT_NAME} so that the bridge br-{name} fits the kernel's 15-character interface names",
                    name.len()
                ),
            );
        } else if !is_dns_label(name) {
            c.report(
                s.name.referenced,
                format!("{field}.name"),
                format!("segment name {name:?} must be lowercase letters, digits and '-'"),
            );
        }
        if !seen_segments.insert(name.clone()) {
            c.report(
                s.name.referenced,
                format!("{field}.name"),
                format!("duplicate segment name {name:?}"),
            );
        }
        let Some(cidr) = c.cidr(&s.cidr, &format!("{field}.cidr")) else {
            continue;
        };
        if cidr.prefix_len() > 30 {
            c.report(
                s.cidr.referenced,
                format!("{field}.cidr"),
                format!("{cidr} is too small for hosts and a gateway; use /30 or larger"),
            );
            continue;
        }
        let gateway = match &s.gateway {
            Some(g) => {
                let Some(ip) = c.ipv4(g, &format!("{field}.gateway")) else {
                    continue;
                };
                if !usable(cidr, ip) {
                    c.report(
                        g.referenced,
                        format!("{field}.gateway"),
                        format!("{ip} is not a usable address of {cidr}"),
                    );
                    continue;
                }
                ip
            }
            None => first_host(cidr),
        };
        segments.push(Segment {
            name: name.clone(),
            cidr,
            gateway,
        });
        segment_at.push(s.cidr.referenced);
    }
    for i in 0..segments.len() {
        for j in 0..i {
            if overlaps(segments[i].cidr, segments[j].cidr) {
                c.report(
                    segment_at[i],
                    format!("segments[{i}].cidr"),
                    format!(
                        "{} overlaps segment {} ({})",
                        segments[i].cidr, segments[j].name, segments[j].cidr
                    ),
                );
            }
        }
    }
    segments
}

/// The cluster-wide ranges (`services:` and `clusterNetwork:`); `None` where a problem was
/// reported.
struct Ranges {
    service_cidr: Option<Ipv4Net>,
    node_port_range: Option<PortRange>,
    network: Option<Ipv4Net>,
    subnet_len: Option<u8>,
    backend: Backend,
    /// Where the file names them, for problems found later (none: the defaults).
    service_at: Option<Location>,
    network_at: Option<Location>,
    subnet_len_at: Option<Location>,
}

fn resolve_ranges(c: &mut Checker, raw: &RawTopology) -> Ranges {
    let services = raw.services.as_ref();
    let service_cidr = match services {
        Some(s) => c.cidr(&s.cluster_ip_range, "services.clusterIPRange"),
        None => Some("10.96.0.0/12".parse().expect("constant")),
    };
    if let (Some(net), Some(s)) = (service_cidr, services)
        && (net.prefix_len() < 12 || net.prefix_len() > 30)
    {
        c.report(
            s.cluster_ip_range.referenced,
            "services.clusterIPRange",
            format!("{net} must be between /12 and /30, as the Kubernetes API server requires"),
        );
    }
    let node_port_range = match services.and_then(|s| s.node_port_range.as_ref()) {
        Some(r) => match PortRange::parse(&r.value) {
            Some(range) => Some(range),
            None => {
                c.report(
                    r.referenced,
                    "services.nodePortRange",
                    format!("{:?} is not a port range such as 30000-32767", r.value),
                );
                None
            }
        },
        None => Some(PortRange {
            first: 30000,
            last: 32767,
        }),
    };

    let (network_field, network) = match &raw.cluster_network {
        Some(n) => (Some(n), c.cidr(&n.network, "clusterNetwork.network")),
        None => (None, Some("10.244.0.0/16".parse().expect("constant"))),
    };
    let subnet_len = network.and_then(|net| {
        let default = if net.prefix_len() <= 22 {
            24
        } else {
            net.prefix_len() + 2
        };
        match network_field.and_then(|n| n.subnet_len.as_ref()) {
            None => Some(default),
            Some(len) if len.value <= net.prefix_len() || len.value > 30 => {
                c.report(
                    len.referenced,
                    "clusterNetwork.subnetLen",
                    format!(
                        "subnetLen {} must be longer than the network's /{} and at most 30",
                        len.value,
                        net.prefix_len()
                    ),
                );
                None
            }
            Some(len) => Some(len.value),
        }
    });
    Ranges {
        service_cidr,
        node_port_range,
        network,
        subnet_len,
        backend: network_field
            .and_then(|n| n.backend.as_ref())
            .map(|b| b.value)
            .unwrap_or(Backend::Vxlan),
        service_at: services.map(|s| s.cluster_ip_range.referenced),
        network_at: network_field.map(|n| n.network.referenced),
        subnet_len_at: network_field.and_then(|n| n.subnet_len.as_ref().map(|l| l.referenced)),
    }
}

/// The service range, the cluster network and the segments must not overlap.
fn check_range_overlaps(c: &mut Checker, raw: &RawTopology, r: &Ranges, segments: &[Segment]) {
    if let (Some(svc), Some(net)) = (r.service_cidr, r.network)
        && overlaps(svc, net)
    {
        c.report(
            r.service_at.or(r.network_at).unwrap_or(raw.name.referenced),
            "services.clusterIPRange",
            format!("service range {svc} overlaps the cluster network {net}"),
        );
    }
    for seg in segments {
        if let Some(svc) = r.service_cidr.filter(|svc| overlaps(*svc, seg.cidr)) {
            c.report(
                r.service_at.unwrap_or(raw.name.referenced),
                "services.clusterIPRange",
                format!(
                    "service range {svc} overlaps segment {} ({})",
                    seg.name, seg.cidr
                ),
            );
        }
        if let Some(net) = r.network.filter(|net| overlaps(*net, seg.cidr)) {
            c.report(
                r.network_at.unwrap_or(raw.name.referenced),
                "clusterNetwork.network",
                format!(
                    "cluster network {net} overlaps segment {} ({})",
                    seg.name, seg.cidr
                ),
            );
        }
    }
}

fn resolve_mtu(c: &mut Checker, raw: &RawTopology) -> u32 {
    match &raw.mtu {
        Some(m) if !(576..=9000).contains(&m.value) => {
            c.report(
                m.referenced,
                "mtu",
                format!("mtu {} must be between 576 and 9000", m.value),
            );
            1500
        }
        Some(m) => m.value,
        None => 1500,
    }
}

/// `proxy:`: the emulated kube-proxy release and the lab's mode, with every mode in the file
/// (the lab's and the hosts' own) checked against that release.
fn resolve_proxy(c: &mut Checker, raw: &RawTopology) -> (Option<KubeVersion>, ProxyMode) {
    let proxy_version = match raw.proxy.as_ref().and_then(|p| p.version.as_ref()) {
        Some(v) => match v.value.parse::<KubeVersion>() {
            Ok(version) => Some(version),
            Err(e) => {
                c.report(v.referenced, "proxy.version", e);
                None
            }
        },
        None => None,
    };
    let profile = ProxyProfile::new(proxy_version);
    let lab_proxy_mode = raw
        .proxy
        .as_ref()
        .and_then(|p| p.mode.as_ref())
        .map(|m| m.value)
        .unwrap_or(profile.default_mode);
    let mode_spans = raw
        .proxy
        .iter()
        .filter_map(|p| p.mode.as_ref().map(|m| (m, "proxy.mode".to_string())))
        .chain(raw.hosts.iter().enumerate().filter_map(|(i, h)| {
            h.proxy_mode
                .as_ref()
                .map(|m| (m, format!("hosts[{i}].proxyMode")))
        }));
    for (mode, field) in mode_spans {
        if let Err(e) = profile.check_mode(mode.value) {
            c.report(mode.referenced, field, e);
        }
    }
    (proxy_version, lab_proxy_mode)
}

/// `hosts:`: each host checked on its own, then the lab as a whole (unique names and
/// addresses, exactly one master).
fn resolve_hosts(
    c: &mut Checker,
    raw: &RawTopology,
    segments: &[Segment],
    lab_proxy_mode: ProxyMode,
    lab_runtime: RuntimeKind,
) -> Vec<Host> {
    if raw.hosts.is_empty() {
        c.report(
            raw.name.referenced,
            "hosts",
            "a lab needs at least one host",
        );
    }
    // With a bad segment, hosts cannot be placed; its problems are reported already.
    let segments_ok = segments.len() == raw.segments.len() && !segments.is_empty();
    let mut hosts = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut masters = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        let field = format!("hosts[{i}]");
        let name = &h.name.value;
        check_host_name(c, &field, h, &raw.name.value);
        if let Some(first) = names.insert(name, i) {
            c.report(
                h.name.referenced,
                format!("{field}.name"),
                format!("duplicate host name {name:?} (also hosts[{first}])"),
            );
        }
        let roles = resolve_roles(c, &field, h);
        if roles.contains(&Role::Master) {
            masters.push((i, h.name.referenced));
        }
        let Some(ip) = c.ipv4(&h.ip, &format!("{field}.ip")) else {
            continue;
        };
        if let Some(first) = ips.insert(ip, i) {
            c.report(
                h.ip.referenced,
                format!("{field}.ip"),
                format!("duplicate IP {ip} (also hosts[{first}])"),
            );
        }
        if !segments_ok {
            continue;
        }
        let Some(segment) = host_segment(c, &field, h, ip, segments) else {
            continue;
        };
        hosts.push(Host {
            name: name.clone(),
            ip,
            segment: segment.name.clone(),
            roles,
            subnet: None,
            proxy_mode: h
                .proxy_mode
                .as_ref()
                .map(|m| m.value)
                .unwrap_or(lab_proxy_mode),
            runtime: h.runtime.as_ref().map(|r| r.value).unwrap_or(lab_runtime),
            daemons: resolve_daemons(c, &field, h),
        });
    }
    match masters.as_slice() {
        [] if !raw.hosts.is_empty() => c.report(
            raw.hosts[0].name.referenced,
            "hosts",
            "no host has the master role: add `roles: [master]` (or `[master, minion]`) to one host",
        ),
        [_, rest @ ..] => {
            for (i, at) in rest {
                c.report(*at, format!("hosts[{i}].roles"), "more than one master: a kemu lab runs one control plane");
            }
        }
        _ => {}
    }
    hosts
}

/// A host name is a node name, a hostname and part of a namespace name, and must not take
/// the names kemu gives its own namespaces.
fn check_host_name(c: &mut Checker, field: &str, h: &RawHost, lab: &str) {
    let name = &h.name.value;
    let namespace = format!("kemu-{lab}-{name}");
    if name.len() > MAX_HOST_NAME {
        c.report(
            h.name.referenced,
            format!("{field}.name"),
            format!(
                "host name {name:?} is {} characters long; the limit is {MAX_HOST_NAME} (a Kubernetes label value and a hostname)",
                name.len()
            ),
        );
    } else if namespace.len() > MAX_NAMESPACE_NAME {
        c.report(
            h.name.referenced,
            format!("{field}.name"),
            format!("namespace name {namespace:?} is longer than {MAX_NAMESPACE_NAME} bytes"),
        );
    } else if !is_dns_subdomain(name) {
        c.report(
            h.name.referenced,
            format!("{field}.name"),
            format!(
                "host name {name:?} must be a valid Kubernetes node name: lowercase letters, digits, '-' and '.'"
            ),
        );
    } else if name == "fabric" || name == "router" || name.starts_with("pod-") {
        c.report(
            h.name.referenced,
            format!("{field}.name"),
            format!("host name {name:?} is reserved: kemu uses the namespaces kemu-<lab>-fabric, kemu-<lab>-router and kemu-<lab>-pod-*"),
        );
    }
}

/// The host's roles, each once, sorted; a client is nothing else.
fn resolve_roles(c: &mut Checker, field: &str, h: &RawHost) -> Vec<Role> {
    let mut roles: Vec<Role> = Vec::new();
    for r in &h.roles {
        if roles.contains(&r.value) {
            c.report(
                r.referenced,
                format!("{field}.roles"),
                format!("role {:?} is listed twice", r.value),
            );
        } else {
            roles.push(r.value);
        }
    }
    if roles.is_empty() {
        c.report(
            h.name.referenced,
            format!("{field}.roles"),
            "a host needs roles: [master], [minion], [master, minion] or [client]",
        );
    }
    if roles.contains(&Role::Client) && roles.len() > 1 {
        c.report(
            h.roles[0].referenced,
            format!("{field}.roles"),
            "a client is a machine outside the cluster: it cannot also be master or minion",
        );
    }
    roles.sort_by_key(|r| *r as u8);
    roles
}

/// The segment a host's address puts it on (or the one it names, which must contain the
/// address); the address must be a usable one that is not the segment's gateway.
fn host_segment<'s>(
    c: &mut Checker,
    field: &str,
    h: &RawHost,
    ip: Ipv4Addr,
    segments: &'s [Segment],
) -> Option<&'s Segment> {
    let segment = match &h.segment {
        Some(s) => match segments.iter().find(|seg| seg.name == s.value) {
            Some(seg) if !seg.cidr.contains(&ip) => {
                c.report(
                    h.ip.referenced,
                    format!("{field}.ip"),
                    format!("{ip} is outside its segment {} ({})", seg.name, seg.cidr),
                );
                return None;
            }
            Some(seg) => seg,
            None => {
                c.report(
                    s.referenced,
                    format!("{field}.segment"),
                    format!("no segment is named {:?}", s.value),
                );
                return None;
            }
        },
        None => match segments.iter().find(|seg| seg.cidr.contains(&ip)) {
            Some(seg) => seg,
            None => {
                let known: Vec<String> = segments
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.cidr))
                    .collect();
                c.report(
                    h.ip.referenced,
                    format!("{field}.ip"),
                    format!("{ip} is outside every segment: {}", known.join(", ")),
                );
                return None;
            }
        },
    };
    if !usable(segment.cidr, ip) {
        c.report(
            h.ip.referenced,
            format!("{field}.ip"),
            format!(
                "{ip} is the network or broadcast address of {}",
                segment.cidr
            ),
        );
    } else if ip == segment.gateway {
        c.report(
            h.ip.referenced,
            format!("{field}.ip"),
            format!("{ip} is the gateway of segment {}; give the host another address or set the segment's gateway", segment.name),
        );
    }
    Some(segment)
}

/// `hosts[].daemons`: named uniquely on their host, each with a command.
fn resolve_daemons(c: &mut Checker, field: &str, h: &RawHost) -> Vec<Daemon> {
    let mut daemons: Vec<Daemon> = Vec::new();
    for (j, d) in h.daemons.iter().enumerate() {
        let dfield = format!("{field}.daemons[{j}]");
        if !is_dns_label(&d.name.value) {
            c.report(
                d.name.referenced,
                format!("{dfield}.name"),
                format!(
                    "daemon name {:?} must be lowercase letters, digits and '-'",
                    d.name.value
                ),
            );
        } else if daemons.iter().any(|x| x.name == d.name.value) {
            c.report(
                d.name.referenced,
                format!("{dfield}.name"),
                format!("duplicate daemon name {:?} on this host", d.name.value),
            );
        }
        if d.command.is_empty() {
            c.report(
                d.name.referenced,
                format!("{dfield}.command"),
                "a daemon needs a command, e.g. [iperf3, -s]",
            );
        }
        daemons.push(Daemon {
            name: d.name.value.clone(),
            command: d.command.iter().map(|a| a.value.clone()).collect(),
        });
    }
    daemons
}

/// Pod subnets: flannel skips the first subnet (SubnetMin = Network + one subnet) and kemu
/// leases the rest in file order, so the same file always gives the same subnets.
fn lease_pod_subnets(c: &mut Checker, raw: &RawTopology, r: &Ranges, hosts: &mut [Host]) {
    let (Some(net), Some(len)) = (r.network, r.subnet_len) else {
        return;
    };
    let available = (1u64 << (len - net.prefix_len())) - 1;
    let minions = hosts
        .iter()
        .filter(|h| h.roles.contains(&Role::Minion))
        .count() as u64;
    if minions > available {
        c.report(
            r.subnet_len_at.or(r.network_at).unwrap_or(raw.name.referenced),
            "clusterNetwork.subnetLen",
            format!(
                "cannot give {minions} minions a pod subnet: {net} cut into /{len} subnets gives {available} (the first is reserved); use a larger network or a longer subnetLen"
            ),
        );
        return;
    }
    let mut subnets = net
        .subnets(len)
        .expect("subnet_len is longer than the prefix")
        .skip(1);
    for host in hosts.iter_mut().filter(|h| h.roles.contains(&Role::Minion)) {
        host.subnet = subnets.next();
    }
}

fn resolve_control_plane(c: &mut Checker, raw: &RawTopology) -> ControlPlane {
    let cp = raw.control_plane.as_ref();
    ControlPlane {
        node_monitor_grace_period: cp
            .and_then(|p| p.node_monitor_grace_period.as_ref())
            .and_then(|d| c.duration(d, "controlPlane.nodeMonitorGracePeriod"))
            .unwrap_or(Duration::from_secs(8)),
        pod_eviction_timeout: cp
            .and_then(|p| p.pod_eviction_timeout.as_ref())
            .and_then(|d| c.duration(d, "controlPlane.podEvictionTimeout"))
            .unwrap_or(Duration::from_secs(5)),
        seed: cp.and_then(|p| p.seed.as_ref()).map(|s| s.value),
    }
}

fn resolve_kubelet(c: &mut Checker, raw: &RawTopology) -> KubeletSettings {
    let kubelet = raw.kubelet.as_ref();
    let restart_back_off = kubelet
        .and_then(|k| k.restart_back_off.as_ref())
        .and_then(|d| c.duration(d, "kubelet.restartBackOff"))
        .unwrap_or(Duration::from_secs(10));
    let max_pods = match kubelet.and_then(|k| k.max_pods.as_ref()) {
        Some(m) if m.value == 0 => {
            c.report(
                m.referenced,
                "kubelet.maxPods",
                "maxPods must be at least 1",
            );
            110
        }
        Some(m) => m.value,
        None => 110,
    };
    KubeletSettings {
        restart_back_off,
        max_pods,
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn usable(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

/// `dns:`: on unless switched off; the domain a DNS name; upstreams only the lab's own hosts
/// (a lab never sends traffic to machines outside it); room for the tenth service address.
fn resolve_dns(c: &mut Checker, raw: &RawTopology, r: &Ranges, hosts: &[Host]) -> DnsSettings {
    let Some(dns) = raw.dns.as_ref() else {
        return DnsSettings {
            enabled: true,
            ..DnsSettings::default()
        };
    };
    let enabled = dns.enabled.as_ref().is_none_or(|e| e.value);
    let cluster_domain = match &dns.cluster_domain {
        Some(d) => {
            let domain = d.value.trim_end_matches('.').to_ascii_lowercase();
            if !domain.split('.').all(is_dns_label) || domain.len() > 200 {
                c.report(
                    d.referenced,
                    "dns.clusterDomain",
                    format!("{:?} is not a DNS domain such as cluster.local", d.value),
                );
            }
            domain
        }
        None => "cluster.local".to_string(),
    };
    let mut upstream = Vec::new();
    for (i, u) in dns.upstream.iter().enumerate() {
        let field = format!("dns.upstream[{i}]");
        let Some(ip) = c.ipv4(u, &field) else {
            continue;
        };
        if !hosts.iter().any(|h| h.ip == ip) {
            c.report(
                u.referenced,
                field,
                format!("{ip} is not one of this lab's hosts: an upstream nameserver must be a host of the lab (a lab sends no traffic outside itself)"),
            );
            continue;
        }
        upstream.push(ip);
    }
    if enabled
        && let Some(net) = r.service_cidr
        && net.prefix_len() > 28
    {
        c.report(
            r.service_at.unwrap_or(raw.name.referenced),
            "services.clusterIPRange",
            format!("{net} has no tenth address for the kube-dns Service: use /28 or larger, or `dns: {{enabled: false}}`"),
        );
    }
    DnsSettings {
        enabled,
        cluster_domain,
        upstream,
    }
}
