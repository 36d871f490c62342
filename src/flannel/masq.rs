//! flannel's `--ip-masq` rules (modern flannel, iptables backend): traffic from pods that
//! leaves the cluster network is masqueraded, traffic between pods is not, and traffic that
//! kube-proxy already marked for masquerading (mark 0x4000) is left to kube-proxy. Rendered as
//! `iptables-restore --noflush` input for the host's namespace.

use ipnet::Ipv4Net;

/// Comment flannel puts on every masquerade rule.
pub const MASQ_COMMENT: &str = "flanneld masq";
/// Comment flannel puts on its forward rules.
pub const FORWARD_COMMENT: &str = "flanneld forward";

/// The nat and filter rules of a host whose lease is `pod_cidr` in `network`.
pub fn rules(network: Ipv4Net, pod_cidr: Ipv4Net, random_fully: bool) -> String {
    let c = format!("-m comment --comment \"{MASQ_COMMENT}\"");
    let masq = if random_fully {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    let f = format!("-m comment --comment \"{FORWARD_COMMENT}\"");
    format!(
        "*nat\n\
         :FLANNEL-POSTRTG - [0:0]\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {pod_cidr} -d {network} {c} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {network} -d {pod_cidr} {c} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {network} -d {pod_cidr} {c} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 {c} -j {masq}\n\
         -A FLANNEL-POSTRTG ! -s {network} -d {network} {c} -j {masq}\n\
         COMMIT\n\
         *filter\n\
         :FLANNEL-FWD - [0:0]\n\
         -A FLANNEL-FWD -s {network} {f} -j ACCEPT\n\
         -A FLANNEL-FWD -d {network} {f} -j ACCEPT\n\
         COMMIT\n"
    )
}

/// The jump rules from the built-in chains, as (table, chain, rule) for `iptables -C/-I/-D`.
pub fn jumps() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let rule = |comment: &str, target: &str| {
        vec![
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            comment.to_string(),
            "-j".into(),
            target.to_string(),
        ]
    };
    vec![
        ("nat", "POSTROUTING", rule(MASQ_COMMENT, "FLANNEL-POSTRTG")),
        ("filter", "FORWARD", rule(FORWARD_COMMENT, "FLANNEL-FWD")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_host_rules() {
        let text = rules(
            "172.16.0.0/16".parse().unwrap(),
            "172.16.1.0/24".parse().unwrap(),
            true,
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(text));
    }
}
