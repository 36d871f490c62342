//! Modern kube-proxy `iptables` mode: the `iptables-restore --noflush` input of a full sync
//! (filter and nat tables), rule for rule as `syncProxyRules` in `pkg/proxy/iptables/proxier.go`
//! writes it, plus the jump rules it ensures in the built-in chains.
//!
//! Per service port, in order: the `KUBE-SERVICES` capture of the ClusterIP (or a filter
//! REJECT/DROP when there are no usable endpoints), external IPs, load-balancer IPs, the node
//! port, the health-check node port; then the port's own chains: the masquerade rule of the
//! internal policy chain, `KUBE-EXT-*`, `KUBE-FW-*`, `KUBE-SVC-*`/`KUBE-SVL-*` (affinity and
//! probability rules) and one `KUBE-SEP-*` per reachable endpoint.

use std::collections::HashSet;
use std::fmt::Write;

use super::hash::{IptablesChains, iptables_endpoint_chain};
use super::model::{Endpoint, IpFamily, ServicePort, categorize};
use super::{JumpRule, Position, ProxyInput};

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// Above this many endpoints kube-proxy drops the comments of SVC→SEP and SEP rules.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
];

/// kube-proxy's `computeProbability`: `%0.10f` of 1/n.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The jump rules of `iptablesJumpChains` followed by kubelet's `KUBE-FIREWALL` duplicates,
/// all prepended; so in a built-in chain the last one ensured ends up first.
pub fn jump_rules() -> Vec<JumpRule> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let rule = |table, chain, extra: &[&str], comment: &str, target: &str| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !comment.is_empty() {
            args.extend(["-m", "comment", "--comment", comment].map(String::from));
        }
        args.extend(["-j", target].map(String::from));
        JumpRule {
            table,
            chain,
            position: Position::Prepend,
            args,
        }
    };
    let portals = "kubernetes externally-visible service portals";
    let firewall = "kubernetes load balancer firewall";
    vec![
        rule("filter", "INPUT", &new, portals, KUBE_EXTERNAL_SERVICES),
        rule("filter", "FORWARD", &new, portals, KUBE_EXTERNAL_SERVICES),
        rule(
            "filter",
            "INPUT",
            &[],
            "kubernetes health check service ports",
            KUBE_NODEPORTS,
        ),
        rule(
            "filter",
            "FORWARD",
            &new,
            "kubernetes service portals",
            KUBE_SERVICES,
        ),
        rule(
            "filter",
            "OUTPUT",
            &new,
            "kubernetes service portals",
            KUBE_SERVICES,
        ),
        rule(
            "filter",
            "FORWARD",
            &[],
            "kubernetes forwarding rules",
            KUBE_FORWARD,
        ),
        rule("filter", "INPUT", &new, firewall, KUBE_PROXY_FIREWALL),
        rule("filter", "OUTPUT", &new, firewall, KUBE_PROXY_FIREWALL),
        rule("filter", "FORWARD", &new, firewall, KUBE_PROXY_FIREWALL),
        rule(
            "nat",
            "OUTPUT",
            &[],
            "kubernetes service portals",
            KUBE_SERVICES,
        ),
        rule(
            "nat",
            "PREROUTING",
            &[],
            "kubernetes service portals",
            KUBE_SERVICES,
        ),
        rule(
            "nat",
            "POSTROUTING",
            &[],
            "kubernetes postrouting rules",
            KUBE_POSTROUTING,
        ),
        rule("filter", "INPUT", &[], "", KUBE_FIREWALL),
        rule("filter", "OUTPUT", &[], "", KUBE_FIREWALL),
    ]
}

/// The four sections of the restore input, filled in kube-proxy's order.
struct Buffers {
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

impl Buffers {
    fn chain(buf: &mut String, name: &str) {
        let _ = writeln!(buf, ":{name} - [0:0]");
    }
}

/// Render the restore input (a full sync, or kube-proxy's partial sync when
/// `input.changed_services` is set).
pub fn render(input: &ProxyInput) -> String {
    render_counted(input).0
}

/// [`render`], plus the number of nat rules of unchanged services a partial sync computed
/// but did not write (for kube-proxy's `sync_proxy_rules_iptables_total` metric).
pub fn render_counted(input: &ProxyInput) -> (String, usize) {
    let node = &input.node;
    let is_ipv6 = node.family() == IpFamily::V6;
    let mark = node.masquerade_mark();
    let localhost_node_ports = node.effective_localhost_node_ports();
    let detector = node.cluster_cidr.map(|c| c.to_string());

    let estimate = input.services.len() * 1024 + 4096;
    let mut b = Buffers {
        filter_chains: String::with_capacity(512),
        filter_rules: String::with_capacity(estimate / 4),
        nat_chains: String::with_capacity(estimate / 4),
        nat_rules: String::with_capacity(estimate),
    };

    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        Buffers::chain(&mut b.filter_chains, chain);
    }
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        Buffers::chain(&mut b.nat_chains, chain);
    }
    let _ = writeln!(
        b.nat_rules,
        "-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(
        b.nat_rules,
        "-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}"
    );
    let _ = writeln!(
        b.nat_rules,
        "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{}",
        if node.random_fully {
            " --random-fully"
        } else {
            ""
        }
    );
    let _ = writeln!(b.nat_rules, "-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}");

    if !is_ipv6 && localhost_node_ports {
        Buffers::chain(&mut b.filter_chains, KUBE_FIREWALL);
        let _ = writeln!(
            b.filter_rules,
            "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
    }

    let total_endpoints: usize = input
        .services
        .iter()
        .map(|s| input.endpoints_of(&s.name).len())
        .sum();
    let large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    let mut probabilities: Vec<String> = vec![String::new()];
    let mut active_chains: HashSet<String> = HashSet::new();
    let track_active = !input.existing_nat_chains.is_empty();

    let ctx = ServiceContext {
        input,
        localhost_nfacct: localhost_node_ports && !is_ipv6 && node.nfacct_localhost,
        detector: detector.as_deref(),
        large_cluster,
        skipped_rules: std::cell::Cell::new(0),
    };
    for svc in &input.services {
        ctx.render_service(
            svc,
            &mut b,
            &mut probabilities,
            track_active.then_some(&mut active_chains),
        );
    }

    // Chains kube-proxy made earlier but no longer needs: a chain line flushes, `-X` deletes.
    let mut stale: Vec<&String> = input
        .existing_nat_chains
        .iter()
        .filter(|c| {
            SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)) && !active_chains.contains(*c)
        })
        .collect();
    stale.sort();
    stale.dedup();
    for chain in stale {
        Buffers::chain(&mut b.nat_chains, chain);
        let _ = writeln!(b.nat_rules, "-X {chain}");
    }

    let tail_comment =
        "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    if node.node_ports_match_all() {
        let _ = write!(
            b.nat_rules,
            "-A {KUBE_SERVICES} -m comment --comment {tail_comment} -m addrtype --dst-type LOCAL"
        );
        if is_ipv6 {
            b.nat_rules.push_str(" ! -d ::1/128");
        } else if !localhost_node_ports {
            b.nat_rules.push_str(" ! -d 127.0.0.0/8");
        }
        let _ = writeln!(b.nat_rules, " -j {KUBE_NODEPORTS}");
    } else {
        for ip in node.node_port_ips() {
            if ip.is_loopback() && (is_ipv6 || !localhost_node_ports) {
                continue;
            }
            let _ = writeln!(
                b.nat_rules,
                "-A {KUBE_SERVICES} -m comment --comment {tail_comment} -d {ip} -j {KUBE_NODEPORTS}"
            );
        }
    }

    if !node.conntrack_tcp_be_liberal {
        let _ = write!(
            b.filter_rules,
            "-A {KUBE_FORWARD} -m conntrack --ctstate INVALID"
        );
        if node.nfacct_invalid_drop {
            b.filter_rules
                .push_str(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts");
        }
        b.filter_rules.push_str(" -j DROP\n");
    }
    let _ = writeln!(
        b.filter_rules,
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
    );
    let _ = writeln!(
        b.filter_rules,
        "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );

    let mut out = String::with_capacity(
        b.filter_chains.len() + b.filter_rules.len() + b.nat_chains.len() + b.nat_rules.len() + 32,
    );
    out.push_str("*filter\n");
    out.push_str(&b.filter_chains);
    out.push_str(&b.filter_rules);
    out.push_str("COMMIT\n*nat\n");
    out.push_str(&b.nat_chains);
    out.push_str(&b.nat_rules);
    out.push_str("COMMIT\n");
    (out, ctx.skipped_rules.get())
}

/// What every service port's rules depend on besides the port itself.
struct ServiceContext<'a> {
    input: &'a ProxyInput,
    localhost_nfacct: bool,
    detector: Option<&'a str>,
    large_cluster: bool,
    /// nat rules a partial sync computed but did not write.
    skipped_rules: std::cell::Cell<usize>,
}

impl ServiceContext<'_> {
    fn render_service(
        &self,
        svc: &ServicePort,
        b: &mut Buffers,
        probabilities: &mut Vec<String>,
        mut active: Option<&mut HashSet<String>>,
    ) {
        let node = &self.input.node;
        let spn = svc.name.to_string();
        let proto = svc.name.protocol.as_str();
        let chains = IptablesChains::new(&spn, proto);
        let endpoints = self.input.endpoints_of(&svc.name);
        let cat = categorize(endpoints, svc);
        let has_endpoints = cat.has_any;

        let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
        let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
        let (internal_chain, has_internal) = if svc.internal_policy_local {
            (&chains.local, has_endpoints && !cat.local.is_empty())
        } else {
            (&chains.cluster, has_endpoints)
        };
        let (external_policy_chain, has_external) = if svc.external_policy_local {
            (&chains.local, has_endpoints && !cat.local.is_empty())
        } else {
            (&chains.cluster, has_endpoints)
        };
        let uses_external_chain = has_endpoints && svc.externally_accessible();
        let uses_fw_chain = has_endpoints
            && !svc.load_balancer_vips.is_empty()
            && !svc.load_balancer_source_ranges.is_empty();
        let lb_chain = if uses_fw_chain {
            &chains.firewall
        } else {
            &chains.external
        };

        let (internal_target, internal_comment, external_target, external_comment) =
            if !has_endpoints {
                let c = format!("\"{spn} has no endpoints\"");
                ("REJECT", c.clone(), "REJECT", c)
            } else {
                let c = format!("\"{spn} has no local endpoints\"");
                ("DROP", c.clone(), "DROP", c)
            };

        let port = svc.port;
        let cip = svc.cluster_ip;
        if has_internal {
            let _ = writeln!(
                b.nat_rules,
                "-A {KUBE_SERVICES} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} -j {internal_chain}"
            );
        } else {
            let _ = writeln!(
                b.filter_rules,
                "-A {KUBE_SERVICES} -m comment --comment {internal_comment} -m {proto} -p {proto} -d {cip} --dport {port} -j {internal_target}"
            );
        }

        for eip in &svc.external_ips {
            if has_endpoints {
                let _ = writeln!(
                    b.nat_rules,
                    "-A {KUBE_SERVICES} -m comment --comment \"{spn} external IP\" -m {proto} -p {proto} -d {eip} --dport {port} -j {}",
                    chains.external
                );
            }
            if !has_external {
                let _ = writeln!(
                    b.filter_rules,
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} -m {proto} -p {proto} -d {eip} --dport {port} -j {external_target}"
                );
            }
        }

        for lbip in &svc.load_balancer_vips {
            if has_endpoints {
                let _ = writeln!(
                    b.nat_rules,
                    "-A {KUBE_SERVICES} -m comment --comment \"{spn} loadbalancer IP\" -m {proto} -p {proto} -d {lbip} --dport {port} -j {lb_chain}"
                );
            }
            if uses_fw_chain {
                let _ = writeln!(
                    b.filter_rules,
                    "-A {KUBE_PROXY_FIREWALL} -m comment --comment \"{spn} traffic not accepted by {}\" -m {proto} -p {proto} -d {lbip} --dport {port} -j DROP",
                    chains.firewall
                );
            }
        }
        if !has_external {
            for lbip in &svc.load_balancer_vips {
                let _ = writeln!(
                    b.filter_rules,
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} -m {proto} -p {proto} -d {lbip} --dport {port} -j {external_target}"
                );
            }
        }

        let node_port = svc.node_port;
        if node_port != 0 {
            if has_endpoints {
                if self.localhost_nfacct {
                    let _ = writeln!(
                        b.nat_rules,
                        "-A {KUBE_NODEPORTS} -m comment --comment {spn} -m {proto} -p {proto} -d 127.0.0.0/8 --dport {node_port} -m nfacct --nfacct-name localhost_nps_accepted_pkts -j {}",
                        chains.external
                    );
                }
                let _ = writeln!(
                    b.nat_rules,
                    "-A {KUBE_NODEPORTS} -m comment --comment {spn} -m {proto} -p {proto} --dport {node_port} -j {}",
                    chains.external
                );
            }
            if !has_external {
                let _ = writeln!(
                    b.filter_rules,
                    "-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j {external_target}"
                );
            }
        }

        if svc.health_check_node_port != 0 {
            let _ = writeln!(
                b.filter_rules,
                "-A {KUBE_NODEPORTS} -m comment --comment \"{spn} health check node port\" -m tcp -p tcp --dport {} -j ACCEPT",
                svc.health_check_node_port
            );
        }

        // A partial sync leaves the chains of unchanged services as they are; they are still
        // computed (and kept active) but not written.
        let (mut skipped_chains, mut skipped_rules) = (String::new(), String::new());
        let skip = self
            .input
            .changed_services
            .as_ref()
            .is_some_and(|changed| !changed.contains(&svc.name.service_key()));
        let (nat_chains, nat_rules) = if skip {
            (&mut skipped_chains, &mut skipped_rules)
        } else {
            (&mut b.nat_chains, &mut b.nat_rules)
        };
        let mut activate = |name: &str| {
            if let Some(set) = active.as_deref_mut() {
                set.insert(name.to_owned());
            }
        };

        if has_internal {
            if node.masquerade_all {
                let _ = writeln!(
                    nat_rules,
                    "-A {internal_chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} -j {KUBE_MARK_MASQ}"
                );
            } else if let Some(cidr) = self.detector {
                let _ = writeln!(
                    nat_rules,
                    "-A {internal_chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} ! -s {cidr} -j {KUBE_MARK_MASQ}"
                );
            }
        }

        if uses_external_chain {
            let ext = &chains.external;
            Buffers::chain(nat_chains, ext);
            activate(ext);
            if !svc.external_policy_local {
                let _ = writeln!(
                    nat_rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j {KUBE_MARK_MASQ}"
                );
            } else {
                if let Some(cidr) = self.detector {
                    let _ = writeln!(
                        nat_rules,
                        "-A {ext} -m comment --comment \"pod traffic for {spn} external destinations\" -s {cidr} -j {}",
                        chains.cluster
                    );
                }
                let _ = writeln!(
                    nat_rules,
                    "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
                );
                let _ = writeln!(
                    nat_rules,
                    "-A {ext} -m comment --comment \"route LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {}",
                    chains.cluster
                );
            }
            if has_external {
                let _ = writeln!(nat_rules, "-A {ext} -j {external_policy_chain}");
            }
        }

        if uses_fw_chain {
            let fw = &chains.firewall;
            Buffers::chain(nat_chains, fw);
            activate(fw);
            let mut allow_from_node = false;
            for cidr in &svc.load_balancer_source_ranges {
                let _ = writeln!(
                    nat_rules,
                    "-A {fw} -m comment --comment \"{spn} loadbalancer IP\" -s {cidr} -j {}",
                    chains.external
                );
                allow_from_node |= node.node_ip().is_some_and(|ip| cidr.contains(&ip));
            }
            if allow_from_node {
                for lbip in &svc.load_balancer_vips {
                    let _ = writeln!(
                        nat_rules,
                        "-A {fw} -m comment --comment \"{spn} loadbalancer IP\" -s {lbip} -j {}",
                        chains.external
                    );
                }
            }
            let _ = writeln!(
                nat_rules,
                "-A {fw} -m comment --comment \"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL\""
            );
        }

        // Endpoint chain names, computed once per reachable endpoint.
        let sep_names: Vec<Option<String>> = {
            let mut names = vec![None; endpoints.len()];
            for &i in &cat.reachable {
                names[i] = Some(iptables_endpoint_chain(&spn, proto, &endpoints[i].addr));
            }
            names
        };
        let sep = |i: usize| {
            sep_names[i]
                .as_deref()
                .expect("policy endpoints are reachable")
        };

        let policy_chains = [
            (uses_cluster_chain, &chains.cluster, &cat.cluster),
            (uses_local_chain, &chains.local, &cat.local),
        ];
        for (used, chain, list) in policy_chains {
            if !used {
                continue;
            }
            Buffers::chain(nat_chains, chain);
            activate(chain);
            self.write_service_to_endpoint_rules(
                nat_rules,
                &spn,
                svc,
                chain,
                endpoints,
                list,
                &sep_names,
                probabilities,
            );
        }

        for &i in &cat.reachable {
            let ep = &endpoints[i];
            let chain = sep(i);
            Buffers::chain(nat_chains, chain);
            activate(chain);
            let comment = if self.large_cluster {
                String::new()
            } else {
                format!(" -m comment --comment {spn}")
            };
            let _ = writeln!(
                nat_rules,
                "-A {chain}{comment} -s {} -j {KUBE_MARK_MASQ}",
                ep.ip
            );
            let _ = write!(nat_rules, "-A {chain}{comment}");
            if svc.affinity_timeout().is_some() {
                let _ = write!(nat_rules, " -m recent --name {chain} --set");
            }
            let _ = writeln!(
                nat_rules,
                " -m {proto} -p {proto} -j DNAT --to-destination {}",
                ep.addr
            );
        }
        if skip {
            let skipped = skipped_rules.lines().count();
            self.skipped_rules.set(self.skipped_rules.get() + skipped);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write_service_to_endpoint_rules(
        &self,
        out: &mut String,
        spn: &str,
        svc: &ServicePort,
        chain: &str,
        endpoints: &[Endpoint],
        list: &[usize],
        sep_names: &[Option<String>],
        probabilities: &mut Vec<String>,
    ) {
        let sep = |i: usize| {
            sep_names[i]
                .as_deref()
                .expect("policy endpoints are reachable")
        };
        let comment = |ep: &Endpoint| {
            if self.large_cluster {
                String::new()
            } else {
                format!(" -m comment --comment \"{spn} -> {}\"", ep.addr)
            }
        };
        if let Some(timeout) = svc.affinity_timeout() {
            for &i in list {
                let target = sep(i);
                let _ = writeln!(
                    out,
                    "-A {chain}{} -m recent --name {target} --rcheck --seconds {timeout} --reap -j {target}",
                    comment(&endpoints[i])
                );
            }
        }
        let n = list.len();
        for (pos, &i) in list.iter().enumerate() {
            let _ = write!(out, "-A {chain}{}", comment(&endpoints[i]));
            if pos + 1 < n {
                let remaining = n - pos;
                while probabilities.len() <= remaining {
                    let next = probabilities.len();
                    probabilities.push(probability(next));
                }
                let _ = write!(
                    out,
                    " -m statistic --mode random --probability {}",
                    probabilities[remaining]
                );
            }
            let _ = writeln!(out, " -j {}", sep(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_formatted_like_kube_proxy() {
        // TestComputeProbability's table.
        for (n, want) in [
            (1, "1.0000000000"),
            (2, "0.5000000000"),
            (10, "0.1000000000"),
            (100, "0.0100000000"),
            (1000, "0.0010000000"),
            (10000, "0.0001000000"),
            (100000, "0.0000100000"),
            (100001, "0.0000099999"),
        ] {
            assert_eq!(probability(n), want, "n = {n}");
        }
        assert_eq!(probability(3), "0.3333333333");
    }

    #[test]
    fn jump_rules_print_like_iptables_save() {
        let rules = jump_rules();
        assert_eq!(rules.len(), 14);
        assert_eq!(
            rules[0].save_line(),
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"
        );
        assert_eq!(rules[13].save_line(), "-A OUTPUT -j KUBE-FIREWALL");
        assert!(rules.iter().all(|r| r.position == Position::Prepend));
    }
}
