//! Modern kube-proxy `nftables` mode: the `nft -f` input of a full sync of table
//! `ip kube-proxy` (or `ip6`), object for object as `setupNFTables` and `syncProxyRules` in
//! `pkg/proxy/nftables/proxier.go` add them.
//!
//! Layout: base chains hooked into netfilter, dispatch through verdict maps (`service-ips`,
//! `service-nodeports`, `no-endpoint-*`, `firewall-ips`), per service port `service-`,
//! `local-`, `external-`, `firewall-` and `endpoint-` chains, load balancing with
//! `numgen random mod N vmap { … }` and ClientIP affinity through `affinity-` sets.
//!
//! The text starts with `add table` + `delete table` so one atomic `nft -f` replaces the whole
//! table. kube-proxy instead flushes and re-adds objects in place, which keeps the dynamic
//! contents of affinity sets across syncs; the resulting ruleset is otherwise the same.

use std::fmt::Write;

use super::ProxyInput;
use super::hash::{nft_endpoint_chain_base, nft_service_chain_base};
use super::model::{IpFamily, ServicePort, categorize};

pub const TABLE: &str = "kube-proxy";

const MARK_MASQ: &str = "mark-for-masquerade";

/// Base chains: (name, type, hook, numeric priority). `dstnat` is -100, `srcnat` 100,
/// `filter` 0 for both the ip and ip6 families.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains jumped to from base chains: (destination, source, extra match).
const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    (
        "firewall-check",
        "filter-prerouting-pre-dnat",
        "ct state new",
    ),
    ("firewall-check", "filter-output-pre-dnat", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output", "ct state new"),
];

/// Writes `add …` commands for one table.
struct Tx {
    out: String,
    /// `add rule ip kube-proxy ` etc. are all "add KIND FAMILY TABLE ".
    family: &'static str,
    created: std::collections::HashSet<String>,
}

impl Tx {
    fn line(&mut self, kind: &str, rest: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.out, "add {kind} {} {TABLE} {rest}", self.family);
    }

    /// `ensureChain`: each regular chain is added once.
    fn chain(&mut self, name: &str) {
        if self.created.insert(name.to_owned()) {
            self.line("chain", format_args!("{name}"));
        }
    }

    /// A per-service chain: its name embeds the service (and endpoint), so it is unique and
    /// needs no bookkeeping.
    fn service_chain(&mut self, name: &str) {
        self.line("chain", format_args!("{name}"));
    }

    fn rule(&mut self, chain: &str, rule: std::fmt::Arguments<'_>) {
        self.line("rule", format_args!("{chain} {rule}"));
    }
}

/// Render the full-sync `nft -f` input.
pub fn render(input: &ProxyInput) -> String {
    let mut out = String::new();
    let family = nft_family(input);
    let _ = writeln!(out, "add table {family} {TABLE}");
    let _ = writeln!(out, "delete table {family} {TABLE}");
    out.push_str(&render_table(input));
    out
}

fn nft_family(input: &ProxyInput) -> &'static str {
    match input.node.family() {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// The table's objects, without the reset prologue of [`render`].
pub fn render_table(input: &ProxyInput) -> String {
    let node = &input.node;
    let family = nft_family(input);
    let (ipx, addr_type, no_localhost) = match node.family() {
        IpFamily::V4 => ("ip", "ipv4_addr", "ip daddr != 127.0.0.0/8"),
        IpFamily::V6 => ("ip6", "ipv6_addr", "ip6 daddr != ::1"),
    };
    let mark = node.masquerade_mark();
    let match_all = node.node_ports_match_all();
    let mut tx = Tx {
        out: String::with_capacity(input.services.len() * 1536 + 8192),
        family,
        created: std::collections::HashSet::new(),
    };

    tx.line(
        "table",
        format_args!("{{ comment \"rules for kube-proxy\" ; }}"),
    );
    for (name, kind, hook, priority) in BASE_CHAINS {
        tx.created.insert(name.to_owned());
        tx.line(
            "chain",
            format_args!("{name} {{ type {kind} hook {hook} priority {priority} ; }}"),
        );
    }
    for (dst, src, extra) in JUMP_CHAINS {
        tx.chain(dst);
        if extra.is_empty() {
            tx.rule(src, format_args!("jump {dst}"));
        } else {
            tx.rule(src, format_args!("{extra} jump {dst}"));
        }
    }
    for chain in ["services", "cluster-ips-check", "masquerading", MARK_MASQ] {
        tx.chain(chain);
    }
    tx.rule(MARK_MASQ, format_args!("mark set mark or {mark}"));
    tx.rule("masquerading", format_args!("mark and {mark} == 0 return"));
    tx.rule("masquerading", format_args!("mark set mark xor {mark}"));
    tx.rule("masquerading", format_args!("masquerade fully-random"));

    tx.line(
        "set",
        format_args!("cluster-ips {{ type {addr_type} ; comment \"Active ClusterIPs\" ; }}"),
    );
    tx.rule(
        "cluster-ips-check",
        format_args!("{ipx} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
    );
    let service_cidrs: Vec<String> = node
        .service_cidrs
        .iter()
        .filter(|c| IpFamily::of(&c.addr()) == node.family())
        .map(|c| c.to_string())
        .collect();
    if !service_cidrs.is_empty() {
        tx.rule(
            "cluster-ips-check",
            format_args!(
                "{ipx} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                service_cidrs.join(",")
            ),
        );
    }
    if !match_all {
        tx.line(
            "set",
            format_args!("nodeport-ips {{ type {addr_type} ; comment \"IPs that accept NodePort traffic\" ; }}"),
        );
        for ip in node.node_port_ips() {
            if !ip.is_loopback() {
                tx.line("element", format_args!("nodeport-ips {{ {ip} }}"));
            }
        }
    }

    tx.line(
        "map",
        format_args!(
            "no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        ),
    );
    tx.line(
        "map",
        format_args!(
            "no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
        ),
    );
    tx.created.insert("reject-chain".to_owned());
    tx.line(
        "chain",
        format_args!("reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"),
    );
    tx.rule("reject-chain", format_args!("reject"));
    tx.rule(
        "service-endpoints-check",
        format_args!("{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    if match_all {
        tx.rule(
            "nodeport-endpoints-check",
            format_args!("{no_localhost} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        );
    } else {
        tx.rule(
            "nodeport-endpoints-check",
            format_args!(
                "{ipx} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
            ),
        );
    }

    tx.line(
        "map",
        format_args!(
            "firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        ),
    );
    tx.chain("firewall-check");
    tx.rule(
        "firewall-check",
        format_args!("{ipx} daddr . meta l4proto . th dport vmap @firewall-ips"),
    );

    tx.line(
        "map",
        format_args!(
            "service-ips {{ type {addr_type} . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        ),
    );
    tx.line(
        "map",
        format_args!("service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"),
    );
    tx.rule(
        "services",
        format_args!("{ipx} daddr . meta l4proto . th dport vmap @service-ips"),
    );
    if match_all {
        tx.rule(
            "services",
            format_args!("fib daddr type local {no_localhost} meta l4proto . th dport vmap @service-nodeports"),
        );
    } else {
        tx.rule(
            "services",
            format_args!(
                "{ipx} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
            ),
        );
    }

    let ctx = Ctx {
        input,
        ipx,
        addr_type,
        detector: node.cluster_cidr.map(|c| c.to_string()),
    };
    for svc in &input.services {
        ctx.render_service(&mut tx, svc);
    }
    tx.out
}

struct Ctx<'a> {
    input: &'a ProxyInput,
    ipx: &'static str,
    addr_type: &'static str,
    detector: Option<String>,
}

impl Ctx<'_> {
    fn render_service(&self, tx: &mut Tx, svc: &ServicePort) {
        let node = &self.input.node;
        let ipx = self.ipx;
        let spn = svc.name.to_string();
        let proto = svc.name.protocol.as_str();
        let base = nft_service_chain_base(&svc.name);
        let cluster_chain = format!("service-{base}");
        let local_chain = format!("local-{base}");
        let external_chain = format!("external-{base}");
        let fw_chain = format!("firewall-{base}");
        let endpoints = self.input.endpoints_of(&svc.name);
        let cat = categorize(endpoints, svc);
        let has_endpoints = cat.has_any;

        // Endpoint chain bases, once per reachable endpoint.
        let mut ep_bases: Vec<Option<String>> = vec![None; endpoints.len()];
        for &i in &cat.reachable {
            let ep_base = nft_endpoint_chain_base(&svc.name, &endpoints[i]);
            tx.line("chain", format_args!("endpoint-{ep_base}"));
            ep_bases[i] = Some(ep_base);
        }
        let ep_base = |i: usize| {
            ep_bases[i]
                .as_deref()
                .expect("policy endpoints are reachable")
        };

        let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
        if uses_cluster_chain {
            tx.service_chain(&cluster_chain);
        }
        let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
        if uses_local_chain {
            tx.service_chain(&local_chain);
        }
        let (internal_chain, has_internal) = if svc.internal_policy_local {
            (&local_chain, has_endpoints && !cat.local.is_empty())
        } else {
            (&cluster_chain, has_endpoints)
        };
        let (external_policy_chain, has_external) = if svc.external_policy_local {
            (&local_chain, has_endpoints && !cat.local.is_empty())
        } else {
            (&cluster_chain, has_endpoints)
        };
        let uses_external_chain = has_endpoints && svc.externally_accessible();
        if uses_external_chain {
            tx.service_chain(&external_chain);
        }
        let (internal_verdict, external_verdict) = if has_endpoints {
            ("drop", "drop")
        } else {
            ("goto reject-chain", "goto reject-chain")
        };

        let cip = svc.cluster_ip;
        let port = svc.port;
        tx.line("element", format_args!("cluster-ips {{ {cip} }}"));
        if has_internal {
            tx.line(
                "element",
                format_args!("service-ips {{ {cip} . {proto} . {port} : goto {internal_chain} }}"),
            );
        } else {
            tx.line(
                "element",
                format_args!("no-endpoint-services {{ {cip} . {proto} . {port} comment \"{spn}\" : {internal_verdict} }}"),
            );
        }

        for eip in &svc.external_ips {
            if has_endpoints {
                tx.line(
                    "element",
                    format_args!(
                        "service-ips {{ {eip} . {proto} . {port} : goto {external_chain} }}"
                    ),
                );
            }
            if !has_external {
                tx.line(
                    "element",
                    format_args!("no-endpoint-services {{ {eip} . {proto} . {port} comment \"{spn}\" : {external_verdict} }}"),
                );
            }
        }

        let uses_fw_chain =
            !svc.load_balancer_vips.is_empty() && !svc.load_balancer_source_ranges.is_empty();
        if uses_fw_chain {
            tx.service_chain(&fw_chain);
        }
        for lbip in &svc.load_balancer_vips {
            if has_endpoints {
                tx.line(
                    "element",
                    format_args!(
                        "service-ips {{ {lbip} . {proto} . {port} : goto {external_chain} }}"
                    ),
                );
            }
            if uses_fw_chain {
                tx.line(
                    "element",
                    format_args!("firewall-ips {{ {lbip} . {proto} . {port} : goto {fw_chain} }}"),
                );
            }
        }
        if !has_external {
            for lbip in &svc.load_balancer_vips {
                tx.line(
                    "element",
                    format_args!("no-endpoint-services {{ {lbip} . {proto} . {port} comment \"{spn}\" : {external_verdict} }}"),
                );
            }
        }

        let node_port = svc.node_port;
        if node_port != 0 {
            if has_endpoints {
                tx.line(
                    "element",
                    format_args!(
                        "service-nodeports {{ {proto} . {node_port} : goto {external_chain} }}"
                    ),
                );
            }
            if !has_external {
                tx.line(
                    "element",
                    format_args!("no-endpoint-nodeports {{ {proto} . {node_port} comment \"{spn}\" : {external_verdict} }}"),
                );
            }
        }

        if has_internal {
            if node.masquerade_all {
                tx.rule(
                    internal_chain,
                    format_args!("{ipx} daddr {cip} jump {MARK_MASQ}"),
                );
            } else if let Some(cidr) = &self.detector {
                tx.rule(
                    internal_chain,
                    format_args!("{ipx} daddr {cip} {ipx} saddr != {cidr} jump {MARK_MASQ}"),
                );
            }
        }

        if uses_external_chain {
            if !svc.external_policy_local {
                tx.rule(&external_chain, format_args!("jump {MARK_MASQ}"));
            } else {
                if let Some(cidr) = &self.detector {
                    tx.rule(
                        &external_chain,
                        format_args!("{ipx} saddr {cidr} goto {cluster_chain} comment \"short-circuit pod traffic\""),
                    );
                }
                tx.rule(
                    &external_chain,
                    format_args!(
                        "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
                    ),
                );
                tx.rule(
                    &external_chain,
                    format_args!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""),
                );
            }
            if has_external {
                tx.rule(
                    &external_chain,
                    format_args!("goto {external_policy_chain}"),
                );
            }
        }

        if uses_fw_chain {
            let mut sources: Vec<String> = svc
                .load_balancer_source_ranges
                .iter()
                .map(|c| c.to_string())
                .collect();
            let allow_from_node = node.node_ip().is_some_and(|ip| {
                svc.load_balancer_source_ranges
                    .iter()
                    .any(|c| c.contains(&ip))
            });
            if allow_from_node {
                sources.extend(svc.load_balancer_vips.iter().map(|ip| ip.to_string()));
            }
            tx.rule(
                &fw_chain,
                format_args!("{ipx} saddr != {{ {} }} drop", sources.join(" , ")),
            );
        }

        if let Some(timeout) = svc.affinity_timeout() {
            for &i in &cat.reachable {
                tx.line(
                    "set",
                    format_args!(
                        "affinity-{} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                        ep_base(i),
                        self.addr_type
                    ),
                );
            }
        }

        let policy_chains = [
            (uses_cluster_chain, &cluster_chain, &cat.cluster),
            (uses_local_chain, &local_chain, &cat.local),
        ];
        for (used, chain, list) in policy_chains {
            if !used {
                continue;
            }
            if svc.affinity_timeout().is_some() {
                for &i in list {
                    let b = ep_base(i);
                    tx.rule(
                        chain,
                        format_args!("{ipx} saddr @affinity-{b} goto endpoint-{b}"),
                    );
                }
            }
            let mut vmap = String::with_capacity(list.len() * 64);
            for (pos, &i) in list.iter().enumerate() {
                if pos > 0 {
                    vmap.push_str(" , ");
                }
                let _ = write!(vmap, "{pos} : goto endpoint-{}", ep_base(i));
            }
            tx.rule(
                chain,
                format_args!("numgen random mod {} vmap {{ {vmap} }}", list.len()),
            );
        }

        for &i in &cat.reachable {
            let ep = &endpoints[i];
            let chain = format!("endpoint-{}", ep_base(i));
            tx.rule(
                &chain,
                format_args!("{ipx} saddr {} jump {MARK_MASQ}", ep.ip),
            );
            if svc.affinity_timeout().is_some() {
                tx.rule(
                    &chain,
                    format_args!("update @affinity-{} {{ {ipx} saddr }}", ep_base(i)),
                );
            }
            tx.rule(
                &chain,
                format_args!("meta l4proto {proto} dnat to {}", ep.addr),
            );
        }
    }
}

/// The maps and sets whose elements kube-proxy keeps in its `nftElementStorage`s, in the
/// order it deletes their leftover elements.
const ELEMENT_STORAGES: [&str; 6] = [
    "cluster-ips",
    "service-ips",
    "firewall-ips",
    "no-endpoint-services",
    "no-endpoint-nodeports",
    "service-nodeports",
];

/// The service (`namespace/name`) a per-service chain or affinity set belongs to: its name
/// is `<prefix>-<hash>-<namespace>/<name>/<proto>/<port>[__<ip>/<port>]`.
fn service_of(name: &str) -> Option<&str> {
    let rest = name.splitn(3, '-').nth(2)?;
    let mut parts = rest.split('/');
    let (namespace, service) = (parts.next()?, parts.next()?);
    Some(&rest[..namespace.len() + 1 + service.len()])
}

/// An element's key (the comment is not part of it) and value (`""` for a set).
fn element_key_value(element: &str) -> (&str, &str) {
    let (key, value) = element.split_once(" : ").unwrap_or((element, ""));
    (key.split(" comment ").next().unwrap_or(key), value)
}

/// One `add KIND FAMILY TABLE NAME REST` line of a render: (kind, prefix, name, rest).
fn split_add(line: &str) -> Option<(&str, &str, &str, &str)> {
    let mut words = line.splitn(6, ' ');
    if words.next()? != "add" {
        return None;
    }
    let kind = words.next()?;
    let (family, table) = (words.next()?, words.next()?);
    let name = words.next()?;
    let prefix = &line[4 + kind.len() + 1..4 + kind.len() + 1 + family.len() + 1 + table.len()];
    Some((kind, prefix, name, words.next().unwrap_or("")))
}

/// The `nft -f` transaction of kube-proxy's partial sync (`syncProxyRules` with
/// `tryPartialSync`, `pkg/proxy/nftables/proxier.go` with its `nftElementStorage`) from the
/// rules of `previous` to those of `next` (both full renders), `changed` being the services
/// whose Service or EndpointSlices changed:
///
/// - no table set-up (only full syncs write the base chains and maps);
/// - the chains of changed services added and flushed, then refilled; their affinity sets
///   added (which keeps the contents of existing ones);
/// - map and set elements as `ensureElem` writes them: a new key added, a changed value
///   deleted and added again, an unchanged one left alone;
/// - service chains no longer used flushed (kube-proxy deletes them in a later sync, at
///   least a second after: a kernel before 6.2 may still see a reference from a deleted map
///   element), affinity sets no longer used deleted, leftover elements deleted.
///
/// Services are walked in sorted order, where kube-proxy walks its map in random order.
pub fn kube_proxy_partial(
    previous: &str,
    next: &str,
    changed: &std::collections::BTreeSet<String>,
) -> String {
    use std::collections::{HashMap, HashSet};
    let is_changed = |name: &str| service_of(name).is_some_and(|s| changed.contains(s));
    let mut old_elements: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    let mut old_chains = Vec::new();
    let mut old_sets = Vec::new();
    let mut table_prefix = "ip kube-proxy";
    for (kind, prefix, name, rest) in previous.lines().filter_map(split_add) {
        table_prefix = prefix;
        match kind {
            "chain" if name.contains('/') => old_chains.push((prefix, name)),
            "set" if name.starts_with("affinity-") => old_sets.push((prefix, name)),
            "element" if ELEMENT_STORAGES.contains(&name) => {
                let element = rest.trim_start_matches("{ ").trim_end_matches(" }");
                old_elements
                    .entry(name)
                    .or_default()
                    .push(element_key_value(element));
            }
            _ => {}
        }
    }

    let mut out = String::new();
    let mut active_chains = HashSet::new();
    let mut active_sets = HashSet::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for line in next.lines() {
        let Some((kind, prefix, name, rest)) = split_add(line) else {
            continue;
        };
        match kind {
            "chain" if name.contains('/') => {
                active_chains.insert(name);
                if is_changed(name) {
                    let _ = writeln!(out, "{line}\nflush chain {prefix} {name}");
                }
            }
            "rule" if name.contains('/') && is_changed(name) => {
                let _ = writeln!(out, "{line}");
            }
            "set" if name.starts_with("affinity-") => {
                active_sets.insert(name);
                if is_changed(name) {
                    let _ = writeln!(out, "{line}");
                }
            }
            "element" if ELEMENT_STORAGES.contains(&name) => {
                let element = rest.trim_start_matches("{ ").trim_end_matches(" }");
                let (key, value) = element_key_value(element);
                if !seen.insert((name, key)) {
                    continue;
                }
                let old = old_elements
                    .get(name)
                    .and_then(|els| els.iter().find(|(k, _)| *k == key));
                match old {
                    Some((_, v)) if *v == value => {}
                    Some(_) => {
                        let _ = writeln!(out, "delete element {prefix} {name} {{ {key} }}\n{line}");
                    }
                    None => {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
            _ => {}
        }
    }
    for (prefix, chain) in &old_chains {
        if !active_chains.contains(chain) {
            let _ = writeln!(out, "flush chain {prefix} {chain}");
        }
    }
    for (prefix, set) in &old_sets {
        if !active_sets.contains(set) {
            let _ = writeln!(out, "delete set {prefix} {set}");
        }
    }
    for storage in ELEMENT_STORAGES {
        for (key, _) in old_elements.get(storage).into_iter().flatten() {
            // `seen` also keeps a key that several ports share from being deleted twice.
            if seen.insert((storage, *key)) {
                let _ = writeln!(out, "delete element {table_prefix} {storage} {{ {key} }}");
            }
        }
    }
    out
}
