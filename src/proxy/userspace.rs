//! The 2015 userspace proxier (`pkg/proxy/proxier.go`, v1.0/v1.1): four nat chains that send
//! service traffic to a local proxy port, where a userspace forwarder picks an endpoint with
//! [`super::roundrobin::LoadBalancerRR`].
//!
//! - `KUBE-PORTALS-CONTAINER` (from PREROUTING): ClusterIP/external IP/LB IP → `REDIRECT`;
//! - `KUBE-PORTALS-HOST` (from OUTPUT): the same → `DNAT` to node IP:proxy port;
//! - `KUBE-NODEPORT-CONTAINER` / `KUBE-NODEPORT-HOST`: the node port, likewise.
//!
//! Rules carry the 2015 comment (`ns/name:port`, colon kept for unnamed ports) and are printed
//! the way `iptables-save` prints them, e.g.
//! `-A KUBE-PORTALS-CONTAINER -d 192.168.3.84/32 -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 8000 -j REDIRECT --to-ports 43981`.
//! Every service port has one proxy port, shared by its portals and its node port; ports are
//! an input ([`super::ProxyInput::proxy_ports`]) allocated by [`ProxyPortAllocator`].

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::model::ServicePortName;
use super::normalize::save_quote;
use super::rng::SeededRng;
use super::{JumpRule, Position, ProxyInput};

pub const PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
pub const PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
pub const NODEPORT_CONTAINER: &str = "KUBE-NODEPORT-CONTAINER";
pub const NODEPORT_HOST: &str = "KUBE-NODEPORT-HOST";

/// The kernel's default ephemeral range (`net.ipv4.ip_local_port_range`), from which the 2015
/// proxy got its ports by listening on port 0.
pub const EPHEMERAL_PORTS: RangeInclusive<u16> = 32768..=60999;

/// `iptablesInit()`: portal hooks are prepended, node-port hooks appended (after Docker's
/// `--dst-type LOCAL` rules).
pub fn jump_rules() -> Vec<JumpRule> {
    let portals = "handle ClusterIPs; NOTE: this must be before the NodePort rules";
    let nodeports = "handle service NodePorts; NOTE: this must be the last rule in the chain";
    let rule = |chain, position, extra: &[&str], comment: &str, target: &str| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend(["-m", "comment", "--comment", comment, "-j", target].map(String::from));
        JumpRule {
            table: "nat",
            chain,
            position,
            args,
        }
    };
    let local = ["-m", "addrtype", "--dst-type", "LOCAL"];
    vec![
        rule(
            "PREROUTING",
            Position::Prepend,
            &[],
            portals,
            PORTALS_CONTAINER,
        ),
        rule("OUTPUT", Position::Prepend, &[], portals, PORTALS_HOST),
        rule(
            "PREROUTING",
            Position::Append,
            &local,
            nodeports,
            NODEPORT_CONTAINER,
        ),
        rule("OUTPUT", Position::Append, &local, nodeports, NODEPORT_HOST),
    ]
}

/// Render the nat-table restore input of the four chains (apply with `iptables-restore
/// --noflush`: only these chains are flushed and refilled).
pub fn render(input: &ProxyInput) -> String {
    let node = &input.node;
    let bind = node.proxy_bind_address;
    let host_ip = if bind.is_unspecified() {
        node.node_ip()
    } else {
        Some(bind)
    };
    let mut chains = [
        (PORTALS_CONTAINER, String::new()),
        (PORTALS_HOST, String::new()),
        (NODEPORT_CONTAINER, String::new()),
        (NODEPORT_HOST, String::new()),
    ];

    for svc in &input.services {
        let Some(&proxy_port) = input.proxy_ports.get(&svc.name) else {
            continue;
        };
        let comment = save_quote(&svc.name.legacy_string());
        let proto = svc.name.protocol.as_str();
        // REDIRECT when bound to all addresses, else DNAT to the bind address.
        let container_target = if bind.is_unspecified() {
            format!("REDIRECT --to-ports {proxy_port}")
        } else {
            format!("DNAT --to-destination {}", join_host_port(bind, proxy_port))
        };
        let host_target = match host_ip {
            Some(ip) => format!("DNAT --to-destination {}", join_host_port(ip, proxy_port)),
            None => continue,
        };
        let portals = std::iter::once(svc.cluster_ip)
            .chain(svc.external_ips.iter().copied())
            .chain(svc.load_balancer_vips.iter().copied());
        for ip in portals {
            let dest = format!("-d {ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
            let common = format!(
                "{dest} -p {proto} -m comment --comment {comment} -m {proto} --dport {}",
                svc.port
            );
            let _ = writeln!(
                chains[0].1,
                "-A {PORTALS_CONTAINER} {common} -j {container_target}"
            );
            let _ = writeln!(chains[1].1, "-A {PORTALS_HOST} {common} -j {host_target}");
        }
        if svc.node_port != 0 {
            let common = format!(
                "-p {proto} -m comment --comment {comment} -m {proto} --dport {}",
                svc.node_port
            );
            let _ = writeln!(
                chains[2].1,
                "-A {NODEPORT_CONTAINER} {common} -j {container_target}"
            );
            let _ = writeln!(chains[3].1, "-A {NODEPORT_HOST} {common} -j {host_target}");
        }
    }

    let mut out = String::with_capacity(chains.iter().map(|c| c.1.len()).sum::<usize>() + 160);
    out.push_str("*nat\n");
    for (name, _) in &chains {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for (_, rules) in &chains {
        out.push_str(rules);
    }
    out.push_str("COMMIT\n");
    out
}

fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// Hands out local proxy ports like the 2015 range allocator: a random start in the range,
/// then the next free port upward, wrapping around. A port is never handed out twice while
/// it is allocated; released ports go back to the pool.
#[derive(Clone, Debug)]
pub struct ProxyPortAllocator {
    range: RangeInclusive<u16>,
    used: HashSet<u16>,
    rng: SeededRng,
}

impl ProxyPortAllocator {
    /// An allocator over the kernel's ephemeral range.
    pub fn new(seed: u64) -> ProxyPortAllocator {
        ProxyPortAllocator::with_range(seed, EPHEMERAL_PORTS)
    }

    pub fn with_range(seed: u64, range: RangeInclusive<u16>) -> ProxyPortAllocator {
        assert!(!range.is_empty(), "empty proxy port range");
        ProxyPortAllocator {
            range,
            used: HashSet::new(),
            rng: SeededRng::new(seed),
        }
    }

    /// The next free port, or `None` when the range is exhausted.
    pub fn allocate(&mut self) -> Option<u16> {
        let start = u32::from(*self.range.start());
        let size = u32::from(*self.range.end()) - start + 1;
        if self.used.len() as u32 >= size {
            return None;
        }
        let offset = self.rng.below(u64::from(size)) as u32;
        (0..size)
            .map(|i| (start + (offset + i) % size) as u16)
            .find(|port| !self.used.contains(port))
            .inspect(|port| {
                self.used.insert(*port);
            })
    }

    /// Mark a port as taken (e.g. one the agent already listens on). False if it was taken.
    pub fn claim(&mut self, port: u16) -> bool {
        self.used.insert(port)
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// A port for every name, in the given order (the stable order makes labs reproducible).
    pub fn allocate_all<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a ServicePortName>,
    ) -> BTreeMap<ServicePortName, u16> {
        names
            .into_iter()
            .filter_map(|name| self.allocate().map(|port| (name.clone(), port)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{NodeContext, Protocol, ServicePort, SessionAffinity};

    /// The seed article's `nginx-service-nodeport` on node 192.168.0.201 with proxy port 43981.
    fn seed_input() -> ProxyInput {
        let name = ServicePortName::new("default", "nginx-service-nodeport", "", Protocol::Tcp);
        let svc = ServicePort {
            name: name.clone(),
            cluster_ip: "192.168.3.84".parse().unwrap(),
            port: 8000,
            node_port: 32606,
            external_ips: vec![],
            load_balancer_vips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: SessionAffinity::None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: 0,
        };
        let node = NodeContext::new("192.168.0.201", vec!["192.168.0.201".parse().unwrap()]);
        ProxyInput {
            node,
            services: vec![svc],
            endpoints: Default::default(),
            proxy_ports: [(name, 43981)].into_iter().collect(),
            existing_nat_chains: vec![],
            changed_services: None,
        }
    }

    /// The article's four rules with its typography restored (`—` → `--`, curly → straight
    /// quotes) and its KUBE-NODEPORT-HOST port 30975 corrected to the service's one node port.
    const SEED_RULES: [&str; 4] = [
        r#"-A KUBE-PORTALS-CONTAINER -d 192.168.3.84/32 -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 8000 -j REDIRECT --to-ports 43981"#,
        r#"-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 32606 -j REDIRECT --to-ports 43981"#,
        r#"-A KUBE-PORTALS-HOST -d 192.168.3.84/32 -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 8000 -j DNAT --to-destination 192.168.0.201:43981"#,
        r#"-A KUBE-NODEPORT-HOST -p tcp -m comment --comment "default/nginx-service-nodeport:" -m tcp --dport 32606 -j DNAT --to-destination 192.168.0.201:43981"#,
    ];

    #[test]
    fn seed_article_rules_are_reproduced_verbatim() {
        let text = render(&seed_input());
        let lines: Vec<&str> = text.lines().collect();
        for rule in SEED_RULES {
            assert!(
                lines.contains(&rule),
                "missing seed rule:\n{rule}\nin:\n{text}"
            );
        }
        // The article's lines as typeset (em dashes, curly quotes, wrong port in the last).
        let article = [
            "-A KUBE-PORTALS-CONTAINER -d 192.168.3.84/32 -p tcp -m comment \u{2014}comment \u{201c}default/nginx-service-nodeport:\u{201d} -m tcp \u{2014}dport 8000 -j REDIRECT \u{2014}to-ports 43981",
            "-A KUBE-NODEPORT-CONTAINER -p tcp -m comment \u{2014}comment \u{201c}default/nginx-service-nodeport:\u{201d} -m tcp \u{2014}dport 32606 -j REDIRECT \u{2014}to-ports 43981",
            "-A KUBE-PORTALS-HOST -d 192.168.3.84/32 -p tcp -m comment \u{2014}comment \u{201c}default/nginx-service-nodeport:\u{201d} -m tcp \u{2014}dport 8000 -j DNAT \u{2014}to-destination 192.168.0.201:43981",
            "-A KUBE-NODEPORT-HOST -p tcp -m comment \u{2014}comment \u{201c}default/nginx-service-nodeport:\u{201d} -m tcp \u{2014}dport 30975 -j DNAT \u{2014}to-destination 192.168.0.201:43981",
        ];
        for (typeset, rule) in article.iter().zip(SEED_RULES) {
            let restored = typeset
                .replace('\u{2014}', "--")
                .replace(['\u{201c}', '\u{201d}'], "\"")
                .replace("--dport 30975", "--dport 32606");
            assert_eq!(restored, rule);
        }
        crate::testing::snapshot_settings()
            .bind(|| insta::assert_snapshot!("seed_nginx_service_nodeport", text));
    }

    #[test]
    fn bind_address_switches_redirect_to_dnat() {
        let mut input = seed_input();
        input.node.proxy_bind_address = "192.168.0.201".parse().unwrap();
        let text = render(&input);
        assert!(
            text.contains("--dport 8000 -j DNAT --to-destination 192.168.0.201:43981"),
            "{text}"
        );
        assert!(!text.contains("REDIRECT"));
    }

    #[test]
    fn service_ports_without_proxy_port_get_no_rules() {
        let mut input = seed_input();
        input.proxy_ports.clear();
        assert_eq!(
            render(&input),
            "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n:KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\nCOMMIT\n"
        );
    }

    #[test]
    fn allocator_is_seedable_and_never_repeats() {
        let mut a = ProxyPortAllocator::new(42);
        let mut b = ProxyPortAllocator::new(42);
        let xs: Vec<u16> = (0..100).map(|_| a.allocate().unwrap()).collect();
        let ys: Vec<u16> = (0..100).map(|_| b.allocate().unwrap()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|p| EPHEMERAL_PORTS.contains(p)));
        let unique: HashSet<u16> = xs.iter().copied().collect();
        assert_eq!(unique.len(), xs.len());
    }

    #[test]
    fn allocator_exhausts_and_reuses_released_ports() {
        let mut alloc = ProxyPortAllocator::with_range(1, 40000..=40002);
        let mut got: Vec<u16> = (0..3).map(|_| alloc.allocate().unwrap()).collect();
        assert_eq!(alloc.allocate(), None);
        got.sort_unstable();
        assert_eq!(got, vec![40000, 40001, 40002]);
        alloc.release(40001);
        assert_eq!(alloc.allocate(), Some(40001));
        assert!(!alloc.claim(40001));
    }

    #[test]
    fn jump_rules_match_iptables_init() {
        let lines: Vec<String> = jump_rules().iter().map(JumpRule::save_line).collect();
        assert_eq!(
            lines,
            vec![
                "-A PREROUTING -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-CONTAINER",
                "-A OUTPUT -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-HOST",
                "-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"handle service NodePorts; NOTE: this must be the last rule in the chain\" -j KUBE-NODEPORT-CONTAINER",
                "-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"handle service NodePorts; NOTE: this must be the last rule in the chain\" -j KUBE-NODEPORT-HOST",
            ]
        );
    }
}
