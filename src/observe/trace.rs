//! `kemu trace`: one marked probe followed through the netfilter rules of every host it
//! crosses. Tracing is switched on by a table of kemu's own in each host, [`trace_table`]
//! (`meta nftrace set 1` for the probe's first packet, matched by its source port, at the
//! prerouting and output hooks), which also traces iptables-nft's rules; `nft monitor trace`
//! in each host reports every rule the packet meets. This module is pure: the table, the
//! parsing of `nft monitor trace` lines, and the path and its outcome.

use std::fmt::Write as _;

/// The table kemu adds for tracing (and removes afterwards).
pub const TABLE: &str = "kemu-trace";

/// The probe's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The DSCP the probe carries (an unassigned code point): it survives NAT, also a
/// masquerade that picks a new source port, and stays on the inner packet of VXLAN.
pub const PROBE_DSCP: u8 = 0x2d;

/// The `nft -f` script that traces the probe's first packet (a TCP SYN, or the datagram),
/// known by its source port `sport` or its DSCP, before any other rule sees it.
pub fn trace_table(proto: Proto, sport: u16) -> String {
    let (by_port, by_dscp) = match proto {
        Proto::Tcp => (
            format!("tcp sport {sport} tcp flags & (syn | ack) == syn"),
            format!("ip dscp {PROBE_DSCP:#x} tcp flags & (syn | ack) == syn"),
        ),
        Proto::Udp => (
            format!("udp sport {sport}"),
            format!("ip dscp {PROBE_DSCP:#x} meta l4proto udp"),
        ),
    };
    let chain = |name: &str, hook: &str| {
        format!(
            "\tchain {name} {{\n\t\ttype filter hook {hook} priority -350; policy accept;\n\
             \t\t{by_port} meta nftrace set 1\n\t\t{by_dscp} meta nftrace set 1\n\t}}\n"
        )
    };
    format!(
        "table inet {TABLE} {{\n{}{}}}\n",
        chain("prerouting", "prerouting"),
        chain("output", "output")
    )
}

/// The script that removes the table again.
pub fn remove_table() -> String {
    format!("delete table inet {TABLE}\n")
}

/// What one line of `nft monitor trace` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The packet enters a base chain: its fields (`iif "cbr0" ... tcp dport 80 ...`).
    Packet { chain: String, fields: String },
    /// A rule matched: its text (counters left out) and verdict.
    Rule {
        chain: String,
        rule: String,
        verdict: String,
    },
    /// The chain's policy decided.
    Policy { chain: String, policy: String },
}

/// `trace id 3e5f6607 ip nat KUBE-SEP-X rule ... (verdict accept)` → the step, with the chain
/// named `family table chain`; `None` for other lines and for kemu's own table.
pub fn parse_line(line: &str) -> Option<Step> {
    let rest = line.strip_prefix("trace id ")?;
    let mut words = rest.splitn(5, ' ');
    let (_id, family, table, chain, tail) = (
        words.next()?,
        words.next()?,
        words.next()?,
        words.next()?,
        words.next()?,
    );
    if table == TABLE {
        return None;
    }
    let chain = format!("{family} {table} {chain}");
    if let Some(fields) = tail.strip_prefix("packet: ") {
        return Some(Step::Packet {
            chain,
            fields: fields.trim().to_string(),
        });
    }
    if let Some(policy) = tail.strip_prefix("policy ") {
        return Some(Step::Policy {
            chain,
            policy: policy.trim().to_string(),
        });
    }
    let rule = tail.strip_prefix("rule ")?;
    let (text, verdict) = match rule.rfind("(verdict ") {
        Some(at) => (
            &rule[..at],
            rule[at + "(verdict ".len()..]
                .trim_end()
                .trim_end_matches(')'),
        ),
        None => (rule, ""),
    };
    // The rule's own verdict statement is shown once, as the verdict.
    let text = without_counters(text);
    let text = text
        .strip_suffix(verdict)
        .map(|t| t.trim_end().to_string())
        .unwrap_or(text);
    Some(Step::Rule {
        chain,
        rule: if text.is_empty() {
            "(every packet)".into()
        } else {
            text
        },
        verdict: verdict.to_string(),
    })
}

/// A rule's text without `counter packets N bytes M` and doubled spaces.
fn without_counters(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            i += 5;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// The fields of a packet line worth showing: devices, addresses, ports, TCP flags.
fn packet_summary(fields: &str) -> String {
    let words: Vec<&str> = fields.split_whitespace().collect();
    let value = |key: &[&str]| -> Option<String> {
        words
            .windows(key.len() + 1)
            .find(|w| w[..key.len()] == *key)
            .map(|w| w[key.len()].trim_matches('"').to_string())
    };
    let mut out = Vec::new();
    if let Some(i) = value(&["iif"]) {
        out.push(format!("in {i}"));
    }
    if let Some(o) = value(&["oif"]) {
        out.push(format!("out {o}"));
    }
    let (src, dst) = (value(&["ip", "saddr"]), value(&["ip", "daddr"]));
    let proto = ["tcp", "udp"]
        .into_iter()
        .find(|p| words.windows(2).any(|w| w[0] == *p && w[1] == "sport"));
    match (src, dst, proto) {
        (Some(s), Some(d), Some(p)) => out.push(format!(
            "{s}:{} -> {d}:{} {p}",
            value(&[p, "sport"]).unwrap_or_default(),
            value(&[p, "dport"]).unwrap_or_default()
        )),
        (Some(s), Some(d), None) => out.push(format!("{s} -> {d}")),
        _ => {}
    }
    out.join("  ")
}

/// The steps of one host, in the order it reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTrace {
    pub host: String,
    pub steps: Vec<Step>,
}

/// How the probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Address rewrites: (host, chain, `dnat to ...`/`snat to ...`/`redirect to ...`/`masquerade`).
    pub rewrites: Vec<(String, String, String)>,
    /// Where a rule or policy dropped it: (host, chain, rule or policy).
    pub dropped: Option<(String, String, String)>,
    /// Whether the probe was answered.
    pub answered: bool,
}

const REWRITES: [&str; 4] = ["dnat to ", "snat to ", "redirect to ", "masquerade"];

/// The outcome of a traced probe.
pub fn outcome(hosts: &[HostTrace], answered: bool) -> Outcome {
    let mut rewrites = Vec::new();
    let mut dropped = None;
    for h in hosts {
        for step in &h.steps {
            match step {
                Step::Rule {
                    chain,
                    rule,
                    verdict,
                } => {
                    for r in REWRITES {
                        if let Some(at) = rule.find(r) {
                            let what: String = rule[at..]
                                .split_whitespace()
                                .take(if r == "masquerade" { 1 } else { 3 })
                                .collect::<Vec<_>>()
                                .join(" ");
                            rewrites.push((h.host.clone(), chain.clone(), what));
                        }
                    }
                    if (verdict == "drop" || rule.ends_with(" drop") || rule.contains(" reject"))
                        && dropped.is_none()
                    {
                        dropped = Some((h.host.clone(), chain.clone(), rule.clone()));
                    }
                }
                Step::Policy { chain, policy } if policy == "drop" && dropped.is_none() => {
                    dropped = Some((h.host.clone(), chain.clone(), "policy drop".into()));
                }
                _ => {}
            }
        }
    }
    Outcome {
        rewrites,
        dropped,
        answered,
    }
}

/// The path host by host, chain by chain, rule by rule, then how it ended.
pub fn render(probe: &str, hosts: &[HostTrace], outcome: &Outcome) -> String {
    let mut out = format!("probe {probe}\n");
    for h in hosts.iter().filter(|h| !h.steps.is_empty()) {
        let _ = writeln!(out, "\nhost {}", h.host);
        for step in &h.steps {
            match step {
                Step::Packet { chain, fields } => {
                    let _ = writeln!(out, "  {chain}  [{}]", packet_summary(fields));
                }
                Step::Rule {
                    chain,
                    rule,
                    verdict,
                } => {
                    let _ = writeln!(out, "    {chain}: {rule}  -> {verdict}");
                }
                Step::Policy { chain, policy } => {
                    let _ = writeln!(out, "    {chain}: policy {policy}");
                }
            }
        }
    }
    out.push('\n');
    for (host, chain, what) in &outcome.rewrites {
        let _ = writeln!(out, "rewritten: {what} on {host} ({chain})");
    }
    match (&outcome.dropped, outcome.answered) {
        (Some((host, chain, rule)), _) => {
            let _ = writeln!(out, "dropped on {host} in {chain}: {rule}");
        }
        (None, true) => out.push_str("delivered: the probe was answered\n"),
        (None, false) => out.push_str(
            "not answered, and no rule dropped it (routing, a link, or nothing listening)\n",
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"trace id c015c4cc inet kemu-trace prerouting packet: iif "cbr0" ip saddr 172.16.2.2 ip daddr 192.168.3.178 ip protocol tcp tcp sport 45999 tcp dport 80 tcp flags == syn
trace id c015c4cc inet kemu-trace prerouting rule tcp sport 45999 meta nftrace set 1 (verdict continue)
trace id c015c4cc ip nat PREROUTING packet: iif "cbr0" ether saddr 5e:42:6b:2a:ad:0c ip saddr 172.16.2.2 ip daddr 192.168.3.178 ip dscp cs0 ip length 60 tcp sport 45999 tcp dport 80 tcp flags == syn tcp window 64860 
trace id c015c4cc ip nat PREROUTING rule  counter packets 879 bytes 102694 jump KUBE-SERVICES (verdict jump KUBE-SERVICES)
trace id c015c4cc ip nat KUBE-SERVICES rule meta l4proto tcp ip daddr 192.168.3.178  tcp dport 80 counter packets 0 bytes 0 jump KUBE-SVC-CDGGSHYLG3RE2FKL (verdict jump KUBE-SVC-CDGGSHYLG3RE2FKL)
trace id c015c4cc ip nat KUBE-SVC-CDGGSHYLG3RE2FKL rule  meta random & 2147483647 < 1073741824 counter packets 0 bytes 0 jump KUBE-SEP-W22UQD5ROBYOJMDR (verdict jump KUBE-SEP-W22UQD5ROBYOJMDR)
trace id c015c4cc ip nat KUBE-SEP-W22UQD5ROBYOJMDR rule meta l4proto tcp   counter packets 0 bytes 0 dnat to 172.16.1.2:8080 (verdict accept)
trace id 3e5f6607 ip filter FORWARD packet: iif "cbr0" oif "flannel.1" ip saddr 172.16.2.2 ip daddr 172.16.1.2 tcp sport 45999 tcp dport 8080 tcp flags == syn
trace id 3e5f6607 ip filter FORWARD rule  counter packets 234 bytes 19320 jump FLANNEL-FWD (verdict jump FLANNEL-FWD)
trace id 3e5f6607 ip filter FLANNEL-FWD rule ip saddr 172.16.0.0/16  counter packets 234 bytes 19320 accept (verdict accept)
trace id 3e5f6607 ip nat POSTROUTING policy accept "#;

    const B: &str = r#"trace id 11111111 ip filter FORWARD packet: iif "flannel.1" oif "veth1" ip saddr 172.16.2.2 ip daddr 172.16.1.2 tcp sport 45999 tcp dport 8080
trace id 11111111 ip filter FORWARD policy drop "#;

    fn host(name: &str, text: &str) -> HostTrace {
        HostTrace {
            host: name.into(),
            steps: text.lines().filter_map(parse_line).collect(),
        }
    }

    #[test]
    fn a_clusterip_probe_is_dnated_then_dropped_by_a_policy() {
        let hosts = vec![host("192.168.0.202", A), host("192.168.0.201", B)];
        let o = outcome(&hosts, false);
        assert_eq!(
            o.rewrites,
            [(
                "192.168.0.202".to_string(),
                "ip nat KUBE-SEP-W22UQD5ROBYOJMDR".to_string(),
                "dnat to 172.16.1.2:8080".to_string()
            )]
        );
        crate::testing::snapshot_settings().bind(|| {
            insta::assert_snapshot!(render(
                "tcp 172.16.2.2:45999 -> 192.168.3.178:80",
                &hosts,
                &o
            ))
        });
    }

    #[test]
    fn the_trace_table_marks_only_the_first_packet() {
        crate::testing::snapshot_settings().bind(|| {
            insta::assert_snapshot!(format!(
                "{}{}",
                trace_table(Proto::Tcp, 45999),
                trace_table(Proto::Udp, 45999)
            ))
        });
        assert_eq!(remove_table(), "delete table inet kemu-trace\n");
    }
}
