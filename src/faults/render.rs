//! Faults as kernel configuration text (pure): nftables tables, tc and iptables arguments.
//! Each fault owns whole nftables tables, so removing it is deleting them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::spec::{Impairment, Percent, Rate};
use super::state::Plane;

/// The mark of packets kemu's delay line sends itself (duplicates): the NFQUEUE rule skips
/// them. "kemu" in ASCII.
pub const ENGINE_MARK: u32 = 0x6b65_6d75;

/// The nftables table of one link's loss and corruption.
pub fn link_table_name(dev: &str) -> String {
    let dev: String = dev
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kemu-link-{dev}")
}

/// The table that drops and corrupts packets leaving `dev`, or `None` when the impairment
/// has neither. Loss draws `numgen random mod 10000` per packet. Corruption overwrites the
/// IPv4 TTL byte and leaves the header checksum stale (nft fixes no checksum for a raw
/// payload write): the receiver counts a checksum error (`IpExtInCsumErrors`) and drops the
/// packet, as a stack drops a damaged frame. (A damaged TCP/UDP payload would go unnoticed
/// between veths, whose checksums are never computed.)
pub fn link_table(dev: &str, imp: &Impairment) -> Option<String> {
    if imp.loss.is_none() && imp.corrupt.is_none() {
        return None;
    }
    let name = link_table_name(dev);
    let mut out = String::new();
    let _ = writeln!(out, "table inet {name} {{");
    out.push_str("\tchain egress {\n");
    // After everything else on the way out (NAT at 100, the delay line's queue at -150).
    out.push_str("\t\ttype filter hook postrouting priority 300; policy accept;\n");
    if let Some(loss) = imp.loss {
        let _ = writeln!(
            out,
            "\t\toifname {} {}counter drop comment \"loss {loss}\"",
            quote(dev),
            draw(loss)
        );
    }
    if let Some(corrupt) = imp.corrupt {
        let _ = writeln!(
            out,
            "\t\toifname {} meta nfproto ipv4 {}@nh,64,8 set 0x0 counter comment \"corrupt {corrupt}\"",
            quote(dev),
            draw(corrupt)
        );
    }
    out.push_str("\t}\n}\n");
    Some(out)
}

/// The match that picks a packet with probability `p` (none at 100%: nft's random numbers
/// are below 10000).
fn draw(p: Percent) -> String {
    if p.0 >= Percent::SCALE {
        String::new()
    } else {
        format!("numgen random mod {} < {} ", Percent::SCALE, p.0)
    }
}

fn quote(dev: &str) -> String {
    format!("\"{}\"", dev.replace(['"', '\\'], ""))
}

/// `nft -f` input that replaces table `inet NAME` with `body` atomically (the empty
/// declaration makes the delete succeed when the table does not exist yet).
pub fn replace_table(name: &str, body: &str) -> String {
    format!("table inet {name} {{}}\ndelete table inet {name}\n{body}")
}

/// `nft -f` input that deletes table `inet NAME` whether or not it exists.
pub fn delete_table(name: &str) -> String {
    format!("table inet {name} {{}}\ndelete table inet {name}\n")
}

/// `tc` arguments of a netem qdisc carrying the whole impairment.
pub fn netem_args(dev: &str, imp: &Impairment) -> Vec<String> {
    let mut args: Vec<String> = ["qdisc", "replace", "dev", dev, "root", "netem"]
        .map(String::from)
        .to_vec();
    if let Some(d) = imp.delay {
        args.push("delay".into());
        args.push(format!("{}us", d.base.as_micros()));
        if !d.jitter.is_zero() {
            args.push(format!("{}us", d.jitter.as_micros()));
        }
    }
    for (name, p) in [
        ("loss", imp.loss),
        ("duplicate", imp.duplicate),
        ("reorder", imp.reorder),
        ("corrupt", imp.corrupt),
    ] {
        if let Some(p) = p {
            args.push(name.into());
            args.push(p.to_string());
        }
    }
    if let Some(rate) = imp.rate {
        args.push("rate".into());
        args.push(format!("{}bit", rate.0));
    }
    args
}

/// `tc` arguments of a token bucket that limits `dev` to `rate`. The bucket holds 20 ms of
/// traffic (at least ten full frames, so a slow rate still passes whole packets) and the
/// queue 50 ms, after which packets are dropped as on a congested link.
pub fn tbf_args(dev: &str, rate: Rate, mtu: u32) -> Vec<String> {
    let bytes_per_sec = rate.0 / 8;
    let burst = (bytes_per_sec / 50).max(10 * u64::from(mtu + 14));
    [
        "qdisc".to_string(),
        "replace".into(),
        "dev".into(),
        dev.into(),
        "root".into(),
        "tbf".into(),
        "rate".into(),
        format!("{}bit", rate.0),
        "burst".into(),
        burst.to_string(),
        "latency".into(),
        "50ms".into(),
    ]
    .to_vec()
}

/// The iptables rule (mangle POSTROUTING) that hands `dev`'s outgoing packets to the delay
/// line on queue `num`; `--queue-bypass` lets them pass if the delay line is gone.
pub fn nfqueue_rule(dev: &str, num: u16) -> Vec<String> {
    [
        "-o".to_string(),
        dev.into(),
        "-m".into(),
        "mark".into(),
        "!".into(),
        "--mark".into(),
        format!("{ENGINE_MARK:#x}"),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("kemu link {dev}"),
        "-j".into(),
        "NFQUEUE".into(),
        "--queue-num".into(),
        num.to_string(),
        "--queue-bypass".into(),
    ]
    .to_vec()
}

/// The addresses of one side of a partition, as one host sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRule {
    /// The other side: underlay addresses and pod subnets.
    pub peers: Vec<Ipv4Net>,
    pub plane: Plane,
    pub one_way: bool,
}

/// The name of the table holding a host's partitions.
pub const PARTITION_TABLE: &str = "kemu-partition";

/// The partition table of one host: packets to the other side are dropped on the way out
/// (postrouting, after DNAT has resolved Services to pods), and packets from it on the way in
/// (prerouting, before anything else, at raw priority). The control plane is TCP to and from
/// the API server (`api`); the data plane is all other traffic.
pub fn partition_table(rules: &[PartitionRule], api: (Ipv4Addr, u16)) -> Option<String> {
    if rules.is_empty() {
        return None;
    }
    let (api_ip, api_port) = api;
    let mut out = String::new();
    let _ = writeln!(out, "table inet {PARTITION_TABLE} {{");
    let mut egress = String::new();
    let mut ingress = String::new();
    let mut data_chains = String::new();
    for (i, rule) in rules.iter().enumerate() {
        let set = format!("peers{i}");
        let elements: Vec<String> = rule.peers.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "\tset {set} {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}",
            elements.join(", ")
        );
        let comment = format!(
            "comment \"partition {} plane{}\"",
            rule.plane,
            if rule.one_way { ", one way" } else { "" }
        );
        for (dir, chain) in [("out", &mut egress), ("in", &mut ingress)] {
            if dir == "in" && rule.one_way {
                continue;
            }
            let peer = if dir == "out" { "daddr" } else { "saddr" };
            let api = format!("{{ {api_ip} . {api_port} }}");
            // Packets to the API server go to its port; its replies come from it.
            let api_matches = [
                format!("ip daddr . tcp dport {api}"),
                format!("ip saddr . tcp sport {api}"),
            ];
            match rule.plane {
                Plane::All => {
                    let _ = writeln!(chain, "\t\tip {peer} @{set} counter drop {comment}");
                }
                Plane::Control => {
                    for m in &api_matches {
                        let _ = writeln!(chain, "\t\tip {peer} @{set} {m} counter drop {comment}");
                    }
                }
                Plane::Data => {
                    // A chain of its own that returns control-plane packets (an `accept`
                    // here would also skip the other partitions' rules) and drops the rest.
                    let data = format!("data{i}-{dir}");
                    let _ = writeln!(chain, "\t\tip {peer} @{set} jump {data}");
                    let _ = writeln!(
                        data_chains,
                        "\tchain {data} {{\n\t\t{} return\n\t\t{} return\n\t\tcounter drop {comment}\n\t}}",
                        api_matches[0], api_matches[1]
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\tchain egress {{\n\t\ttype filter hook postrouting priority 200; policy accept;\n{egress}\t}}"
    );
    let _ = writeln!(
        out,
        "\tchain ingress {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n{ingress}\t}}"
    );
    out.push_str(&data_chains);
    out.push_str("}\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::spec::{parse_delay, parse_percent, parse_rate};

    fn full() -> Impairment {
        Impairment {
            rate: Some(parse_rate("10mbit").unwrap()),
            delay: Some(parse_delay("100ms±10ms").unwrap()),
            loss: Some(parse_percent("5%").unwrap()),
            duplicate: Some(parse_percent("1%").unwrap()),
            reorder: Some(parse_percent("25%").unwrap()),
            corrupt: Some(parse_percent("0.5%").unwrap()),
        }
    }

    #[test]
    fn link_table_drops_and_corrupts() {
        let table = link_table("eth0", &full()).unwrap();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(table));
        assert_eq!(link_table_name("flannel.1"), "kemu-link-flannel_1");
        let delay_only = Impairment {
            delay: full().delay,
            ..Default::default()
        };
        assert_eq!(link_table("eth0", &delay_only), None);
        let all_lost = Impairment {
            loss: parse_percent("100%").ok(),
            ..Default::default()
        };
        let table = link_table("eth0", &all_lost).unwrap();
        assert!(table.contains("oifname \"eth0\" counter drop"), "{table}");
    }

    #[test]
    fn netem_tbf_and_queue_arguments() {
        let text = format!(
            "tc {}\ntc {}\niptables -t mangle -A POSTROUTING {}",
            netem_args("eth0", &full()).join(" "),
            tbf_args("eth0", parse_rate("10mbit").unwrap(), 1500).join(" "),
            nfqueue_rule("eth0", 2).join(" ")
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(text));
    }

    #[test]
    fn partition_tables_per_plane() {
        let peers = vec![
            "192.168.0.202/32".parse().unwrap(),
            "172.16.2.0/24".parse().unwrap(),
        ];
        let api = ("192.168.0.201".parse().unwrap(), 8080);
        let mut text = String::new();
        for (plane, one_way) in [
            (Plane::All, false),
            (Plane::Control, false),
            (Plane::Data, true),
        ] {
            let rule = PartitionRule {
                peers: peers.clone(),
                plane,
                one_way,
            };
            text.push_str(&partition_table(&[rule], api).unwrap());
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(text));
        assert_eq!(partition_table(&[], api), None);
    }
}
