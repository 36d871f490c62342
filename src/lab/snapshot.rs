//! `kemu snapshot`: a host's live packet-filter rules, normalised the way the tests compare
//! them ([`crate::proxy::normalize`]): no counters, no dates, no handles, a stable order.
//! iptables rules come from `iptables-save`; nftables tables from `nft list table`, leaving out
//! the tables that the iptables-nft backend manages (they are already in the iptables part).

use std::fmt::Write as _;

use crate::firewall;
use crate::netns::NetNs;
use crate::proxy::normalize;

/// The tables iptables-nft creates for the iptables tables of these names.
const XTABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// `(family, name)` of the tables in `nft list tables` output that belong to nft users
/// (kube-proxy's nftables mode), not to iptables-nft.
pub fn nft_only_tables(list: &str) -> Vec<(String, String)> {
    list.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "table").then_some(())?;
            let (family, name) = (words.next()?, words.next()?);
            let xtables = matches!(family, "ip" | "ip6") && XTABLES.contains(&name);
            (!xtables).then(|| (family.to_string(), name.to_string()))
        })
        .collect()
}

/// The normalised rules of the namespace `netns`: an `# iptables` part and an `# nftables`
/// part, each present only when it has rules.
pub fn host_rules(netns: &str) -> anyhow::Result<String> {
    let ns = NetNs::open(netns)?;
    let mut out = String::new();
    let iptables = normalize::iptables_save(&firewall::iptables_save(Some(&ns))?);
    if !iptables.trim().is_empty() {
        let _ = write!(out, "# iptables\n{iptables}");
    }
    let mut list = firewall::command(Some(&ns), "nft");
    list.args(["list", "tables"]);
    let mut tables = String::new();
    for (family, name) in nft_only_tables(&firewall::run(list)?) {
        let mut cmd = firewall::command(Some(&ns), "nft");
        cmd.args(["list", "table", &family, &name]);
        tables.push_str(&firewall::run(cmd)?);
    }
    let nft = normalize::nft_ruleset(&tables);
    if !nft.trim().is_empty() {
        let _ = write!(out, "# nftables\n{nft}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_nft_tables_are_left_to_the_iptables_part() {
        let list = "table ip nat\ntable ip filter\ntable ip kube-proxy\ntable ip6 kube-proxy\ntable inet other\n";
        assert_eq!(
            nft_only_tables(list),
            [
                ("ip".to_string(), "kube-proxy".to_string()),
                ("ip6".into(), "kube-proxy".into()),
                ("inet".into(), "other".into())
            ]
        );
    }
}
