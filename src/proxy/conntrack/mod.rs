//! Stale UDP conntrack entries, removed as kube-proxy removes them.
//!
//! UDP has no teardown: once a flow's first packet was DNATed to an endpoint, the conntrack
//! entry keeps sending the flow there (every packet refreshes its 30 s timeout), even after
//! the endpoint is gone and the rules point elsewhere. kube-proxy deletes the entries it
//! knows to be stale after each sync; which ones depends on the release ([`ConntrackCleanup`]):
//!
//! - **on endpoint change** (1.2–1.31, `pkg/proxy/conntrack/cleanup.go` before PR #127318):
//!   [`endpoint_change_filters`] turns the change between two syncs into filters, as
//!   `deleteStaleEndpointConntrackEntries` and `deleteStaleServiceConntrackEntries` did;
//! - **reconciler** (≥ 1.32, `CleanStaleEntries`): [`reconcile`] compares every UDP flow of
//!   the table with the serving endpoints of the service it was sent to.
//!
//! Both are pure. The agent lists the namespace's UDP entries from an [`index`] it keeps from
//! the kernel's conntrack events, dumping the table only when that index cannot be trusted
//! ([`table`]), and deletes through [`crate::proxy::nfnetlink`].

pub mod index;
pub mod table;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::ProxyInput;
use super::model::{Protocol, ServicePortName};
use super::profile::ConntrackCleanup;

pub const IPPROTO_UDP: u8 = 17;

/// One conntrack entry: its original tuple and the source of its reply tuple (the endpoint a
/// DNATed flow was sent to; the original destination when it was not DNATed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub protocol: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
}

/// What kube-proxy deletes: every entry of `protocol` matching all the given fields
/// (`conntrack -D -p udp [--orig-dst IP] [--orig-port-dst PORT] [--reply-src IP]`, later
/// the same filter through netlink, `pkg/proxy/conntrack/filter.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Filter {
    pub protocol: u8,
    pub orig_dst: Option<IpAddr>,
    pub orig_dport: Option<u16>,
    pub reply_src: Option<IpAddr>,
}

impl Filter {
    /// `ClearEntriesForIP`: everything sent to a service IP.
    pub fn for_ip(ip: IpAddr) -> Filter {
        Filter {
            protocol: IPPROTO_UDP,
            orig_dst: Some(ip),
            orig_dport: None,
            reply_src: None,
        }
    }

    /// `ClearEntriesForPort`: everything sent to a node port.
    pub fn for_port(port: u16) -> Filter {
        Filter {
            protocol: IPPROTO_UDP,
            orig_dst: None,
            orig_dport: Some(port),
            reply_src: None,
        }
    }

    /// `ClearEntriesForNAT`: a service IP DNATed to an endpoint.
    pub fn for_nat(ip: IpAddr, endpoint: IpAddr) -> Filter {
        Filter {
            protocol: IPPROTO_UDP,
            orig_dst: Some(ip),
            orig_dport: None,
            reply_src: Some(endpoint),
        }
    }

    /// `ClearEntriesForPortNAT`: a node port DNATed to an endpoint.
    pub fn for_port_nat(port: u16, endpoint: IpAddr) -> Filter {
        Filter {
            protocol: IPPROTO_UDP,
            orig_dst: None,
            orig_dport: Some(port),
            reply_src: Some(endpoint),
        }
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        flow.protocol == self.protocol
            && self.orig_dst.is_none_or(|ip| ip == flow.orig_dst)
            && self.orig_dport.is_none_or(|p| p == flow.orig_dport)
            && self.reply_src.is_none_or(|ip| ip == flow.reply_src)
    }
}

impl std::fmt::Display for Filter {
    /// The `conntrack` command line kube-proxy ran for this filter (≤ 1.31).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conntrack -D -p udp")?;
        if let Some(ip) = self.orig_dst {
            write!(f, " --orig-dst {ip}")?;
        }
        if let Some(port) = self.orig_dport {
            write!(f, " --dport {port}")?;
        }
        if let Some(ip) = self.reply_src {
            write!(f, " --dst-nat {ip}")?;
        }
        Ok(())
    }
}

/// The IPs of the serving endpoints of one service port (traffic policies, topology and
/// terminating state are deliberately ignored, as upstream does).
fn serving_ips(input: &ProxyInput, name: &ServicePortName) -> BTreeSet<IpAddr> {
    input
        .endpoints_of(name)
        .iter()
        .filter(|e| e.serving)
        .map(|e| e.ip)
        .collect()
}

/// Whether a UDP service port's serving endpoints differ between two syncs: kube-proxy's
/// `ConntrackCleanupRequired`, which gates the reconciler.
pub fn udp_endpoints_changed(previous: &ProxyInput, next: &ProxyInput) -> bool {
    let udp_ports = |input: &ProxyInput| -> BTreeSet<ServicePortName> {
        input
            .endpoints
            .keys()
            .filter(|n| n.protocol == Protocol::Udp)
            .cloned()
            .collect()
    };
    let names: BTreeSet<ServicePortName> = udp_ports(previous)
        .into_iter()
        .chain(udp_ports(next))
        .collect();
    names
        .iter()
        .any(|n| serving_ips(previous, n) != serving_ips(next, n))
}

/// kube-proxy 1.2–1.31: the filters for the change from `previous` to `next` (the state of
/// the last successful sync and of this one; an empty input on the first sync, which is why
/// a restarted kube-proxy flushed every UDP service, issue #122740).
pub fn endpoint_change_filters(
    previous: &ProxyInput,
    next: &ProxyInput,
    external: bool,
    newly_active: bool,
) -> Vec<Filter> {
    let mut filters: Vec<Filter> = Vec::new();
    let services: HashMap<&ServicePortName, &super::ServicePort> =
        next.services.iter().map(|s| (&s.name, s)).collect();

    // Deleted UDP endpoints (`detectStaleConntrackEntries`): serving before, and now gone or
    // no longer serving; only for ports that still exist.
    for (name, old) in &previous.endpoints {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let Some(svc) = services.get(name) else {
            continue;
        };
        let new = next.endpoints_of(name);
        for ep in old.iter().filter(|e| e.serving) {
            let still = new.iter().any(|n| n.addr == ep.addr && n.serving);
            if still {
                continue;
            }
            if external && svc.node_port != 0 {
                filters.push(Filter::for_port_nat(svc.node_port, ep.ip));
            }
            filters.push(Filter::for_nat(svc.cluster_ip, ep.ip));
            if external {
                for ip in svc.external_ips.iter().chain(&svc.load_balancer_vips) {
                    filters.push(Filter::for_nat(*ip, ep.ip));
                }
            }
        }
    }

    // Deleted UDP service ports: everything sent to their ClusterIP.
    for svc in &previous.services {
        if svc.name.protocol == Protocol::Udp && !services.contains_key(&svc.name) {
            filters.push(Filter::for_ip(svc.cluster_ip));
        }
    }

    // Newly active UDP service ports (no serving endpoint before, some now): flush their
    // IPs and node port, which may hold un-DNATed "black hole" entries.
    if newly_active {
        for svc in &next.services {
            if svc.name.protocol != Protocol::Udp {
                continue;
            }
            let now = !serving_ips(next, &svc.name).is_empty();
            let before = !serving_ips(previous, &svc.name).is_empty();
            if now && !before {
                filters.push(Filter::for_ip(svc.cluster_ip));
                if external {
                    for ip in svc.external_ips.iter().chain(&svc.load_balancer_vips) {
                        filters.push(Filter::for_ip(*ip));
                    }
                    if svc.node_port != 0 {
                        filters.push(Filter::for_port(svc.node_port));
                    }
                }
            }
        }
    }
    filters.sort();
    filters.dedup();
    filters
}

/// kube-proxy ≥ 1.32 (`CleanStaleEntries`): the UDP flows of `flows` sent to a service
/// frontend (ClusterIP, LB IP or externalIP with the service port, or a node port) whose
/// reply does not come from a serving endpoint of that service port. With `fixed`, services
/// with no endpoints and the UDP ports of `previous` that are gone count as having an empty
/// endpoint set; 1.32 skips both.
pub fn reconcile(
    flows: &[Flow],
    previous: &ProxyInput,
    next: &ProxyInput,
    fixed: bool,
) -> Vec<Flow> {
    let mut by_frontend: HashMap<(IpAddr, u16), BTreeSet<IpAddr>> = HashMap::new();
    let mut by_node_port: HashMap<u16, BTreeSet<IpAddr>> = HashMap::new();
    let mut add = |svc: &super::ServicePort, ips: BTreeSet<IpAddr>| {
        for ip in std::iter::once(&svc.cluster_ip)
            .chain(&svc.load_balancer_vips)
            .chain(&svc.external_ips)
        {
            by_frontend.insert((*ip, svc.port), ips.clone());
        }
        if svc.node_port != 0 {
            by_node_port.insert(svc.node_port, ips);
        }
    };
    if fixed {
        let live: HashSet<&ServicePortName> = next.services.iter().map(|s| &s.name).collect();
        for svc in previous
            .services
            .iter()
            .filter(|s| s.name.protocol == Protocol::Udp && !live.contains(&s.name))
        {
            add(svc, BTreeSet::new());
        }
    }
    for svc in next
        .services
        .iter()
        .filter(|s| s.name.protocol == Protocol::Udp)
    {
        let ips = serving_ips(next, &svc.name);
        // "a Service without endpoints does not require to clean the conntrack entries
        // associated" (1.32; issue #139628).
        if ips.is_empty() && !fixed {
            continue;
        }
        add(svc, ips);
    }
    flows
        .iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .filter(|f| {
            let stale_ip = by_frontend
                .get(&(f.orig_dst, f.orig_dport))
                .is_some_and(|eps| !eps.contains(&f.reply_src));
            let stale_port = by_node_port
                .get(&f.orig_dport)
                .is_some_and(|eps| !eps.contains(&f.reply_src));
            stale_ip || stale_port
        })
        .copied()
        .collect()
}

/// The flows `mode` deletes after a sync from `previous` to `next`, given the table.
pub fn stale_flows(
    mode: ConntrackCleanup,
    flows: &[Flow],
    previous: &ProxyInput,
    next: &ProxyInput,
) -> Vec<Flow> {
    match mode {
        ConntrackCleanup::None => Vec::new(),
        ConntrackCleanup::EndpointChange {
            external,
            newly_active,
        } => {
            let filters = endpoint_change_filters(previous, next, external, newly_active);
            flows
                .iter()
                .filter(|f| filters.iter().any(|flt| flt.matches(f)))
                .copied()
                .collect()
        }
        ConntrackCleanup::Reconciler { fixed } => reconcile(flows, previous, next, fixed),
    }
}

/// Whether a sync from `previous` to `next` has any conntrack work for `mode` (so that the
/// table is only listed when needed).
pub fn cleanup_needed(mode: ConntrackCleanup, previous: &ProxyInput, next: &ProxyInput) -> bool {
    match mode {
        ConntrackCleanup::None => false,
        ConntrackCleanup::EndpointChange {
            external,
            newly_active,
        } => !endpoint_change_filters(previous, next, external, newly_active).is_empty(),
        ConntrackCleanup::Reconciler { fixed } => {
            udp_endpoints_changed(previous, next)
                || (fixed
                    && previous.services.iter().any(|s| {
                        s.name.protocol == Protocol::Udp
                            && !next.services.iter().any(|n| n.name == s.name)
                    }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{NodeContext, objects};

    fn input(yaml: &str) -> ProxyInput {
        let objs = objects::parse_yaml(yaml).unwrap();
        ProxyInput::from_objects(
            NodeContext::new("node-1", vec!["192.168.0.201".parse().unwrap()]),
            &objs.services,
            &objs.endpoint_slices,
        )
    }

    /// A UDP NodePort service `dns` with the given endpoints.
    fn dns(endpoints: &[&str]) -> String {
        let mut yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: ns}\n\
             spec: {type: NodePort, clusterIP: 192.168.3.10, externalIPs: [192.168.0.250],\n\
               ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}]}\n"
            .to_string();
        if !endpoints.is_empty() {
            yaml.push_str(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: dns-1, namespace: ns, labels: {kubernetes.io/service-name: dns}}\n\
                 addressType: IPv4\nports: [{name: dns, port: 53, protocol: UDP}]\nendpoints:\n",
            );
            for ep in endpoints {
                yaml.push_str(&format!("- addresses: [{ep}]\n"));
            }
        }
        yaml
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn flow(dst: &str, dport: u16, reply_src: &str) -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: ip("172.16.2.5"),
            orig_dst: ip(dst),
            orig_sport: 40000,
            orig_dport: dport,
            reply_src: ip(reply_src),
        }
    }

    #[test]
    fn removed_endpoint_gives_nat_filters_for_every_frontend() {
        // deleteStaleEndpointConntrackEntries (1.14–1.31).
        let before = input(&dns(&["172.16.1.2", "172.16.2.2"]));
        let after = input(&dns(&["172.16.2.2"]));
        let filters: Vec<String> = endpoint_change_filters(&before, &after, true, true)
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert_eq!(
            filters,
            [
                "conntrack -D -p udp --dport 30053 --dst-nat 172.16.1.2",
                "conntrack -D -p udp --orig-dst 192.168.0.250 --dst-nat 172.16.1.2",
                "conntrack -D -p udp --orig-dst 192.168.3.10 --dst-nat 172.16.1.2",
            ]
        );
        // Before 1.14 only the ClusterIP was cleaned.
        assert_eq!(
            endpoint_change_filters(&before, &after, false, true),
            vec![Filter::for_nat(ip("192.168.3.10"), ip("172.16.1.2"))]
        );
        assert!(endpoint_change_filters(&after, &after, true, true).is_empty());
    }

    #[test]
    fn newly_active_service_is_flushed() {
        // deleteStaleServiceConntrackEntries: 0 → 1 endpoints (issue #48370, from 1.8).
        let empty = input(&dns(&[]));
        let one = input(&dns(&["172.16.1.2"]));
        let filters = endpoint_change_filters(&empty, &one, true, true);
        assert_eq!(
            filters,
            vec![
                Filter::for_port(30053),
                Filter::for_ip(ip("192.168.0.250")),
                Filter::for_ip(ip("192.168.3.10")),
            ]
        );
        assert!(endpoint_change_filters(&empty, &one, true, false).is_empty());
        // A restarted kube-proxy sees every service as new (issue #122740).
        let nothing = input("");
        assert_eq!(endpoint_change_filters(&nothing, &one, true, true).len(), 3);
    }

    #[test]
    fn reconciler_deletes_flows_not_answered_by_a_serving_endpoint() {
        // CleanStaleEntries (1.32, with the dst-port check of PR #130484).
        let now = input(&dns(&["172.16.2.2"]));
        let flows = [
            flow("192.168.3.10", 53, "172.16.1.2"), // stale: endpoint gone
            flow("192.168.3.10", 53, "172.16.2.2"), // live
            flow("192.168.3.10", 5353, "172.16.1.2"), // another port: not a frontend
            flow("192.168.0.201", 30053, "172.16.1.2"), // node port, stale
            flow("192.168.0.250", 53, "192.168.0.250"), // black hole (never DNATed)
            Flow {
                protocol: 6,
                ..flow("192.168.3.10", 53, "172.16.1.2")
            }, // TCP: never touched
        ];
        let stale = reconcile(&flows, &now, &now, false);
        assert_eq!(stale, vec![flows[0], flows[3], flows[4]]);
    }

    #[test]
    fn reconciler_of_132_skips_services_without_endpoints() {
        // Issue #139628: scaled to zero, the old flows are left; the fixed reconciler
        // (PR #139629) and the deleted-service fix (PR #141371) remove them.
        let before = input(&dns(&["172.16.1.2"]));
        let zero = input(&dns(&[]));
        let flows = [flow("192.168.3.10", 53, "172.16.1.2")];
        assert!(reconcile(&flows, &before, &zero, false).is_empty());
        assert_eq!(reconcile(&flows, &before, &zero, true), flows);
        let gone = input("");
        assert!(reconcile(&flows, &before, &gone, false).is_empty());
        assert_eq!(reconcile(&flows, &before, &gone, true), flows);
        assert!(cleanup_needed(
            ConntrackCleanup::Reconciler { fixed: false },
            &before,
            &zero
        ));
        assert!(!cleanup_needed(
            ConntrackCleanup::Reconciler { fixed: false },
            &zero,
            &zero
        ));
        assert!(!cleanup_needed(ConntrackCleanup::None, &before, &zero));
    }
}
