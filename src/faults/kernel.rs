//! The thin layer under the faults: `ip`, `tc`, `nft`, `iptables` and `ethtool`, always run
//! inside a lab's namespace (never the root namespace: every function takes the namespace).

use std::process::Command;

use crate::firewall;
use crate::netns::NetNs;

/// A command run inside `ns`.
pub fn cmd(ns: &NetNs, program: &str, args: &[String]) -> Command {
    let mut cmd = firewall::command(Some(ns), program);
    cmd.args(args);
    cmd
}

/// Run `program args` inside `ns`; its stdout, or an error with its stderr.
pub fn run(ns: &NetNs, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    firewall::run(cmd(ns, program, &args))
        .map_err(|e| anyhow::anyhow!("in {}: {program} {}: {e}", ns.name(), args.join(" ")))
}

/// `nft -f -` of `text` inside `ns`.
pub fn nft(ns: &NetNs, text: &str) -> anyhow::Result<()> {
    firewall::nft_apply(Some(ns), text).map_err(|e| anyhow::anyhow!("in {}: {e}", ns.name()))
}

/// A link as `ip -j link show` describes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub ifname: String,
    pub mtu: u32,
    #[serde(default)]
    pub flags: Vec<String>,
}

impl LinkInfo {
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// Every link of `ns`.
pub fn links(ns: &NetNs) -> anyhow::Result<Vec<LinkInfo>> {
    let text = run(ns, "ip", &["-j", "link", "show"])?;
    Ok(serde_json::from_str(&text)?)
}

/// One link of `ns`, with an error naming the links there are.
pub fn link(ns: &NetNs, dev: &str) -> anyhow::Result<LinkInfo> {
    let all = links(ns)?;
    let names: Vec<String> = all.iter().map(|l| l.ifname.clone()).collect();
    all.into_iter().find(|l| l.ifname == dev).ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no link {dev:?}; links: {}",
            ns.name(),
            names.join(", ")
        )
    })
}

pub fn set_up(ns: &NetNs, dev: &str, up: bool) -> anyhow::Result<()> {
    run(
        ns,
        "ip",
        &["link", "set", "dev", dev, if up { "up" } else { "down" }],
    )
    .map(|_| ())
}

pub fn set_mtu(ns: &NetNs, dev: &str, mtu: u32) -> anyhow::Result<()> {
    run(
        ns,
        "ip",
        &["link", "set", "dev", dev, "mtu", &mtu.to_string()],
    )
    .map(|_| ())
}

/// The offloads that let a veth carry packets larger than the MTU.
pub const OFFLOADS: [&str; 3] = [
    "generic-segmentation-offload",
    "tcp-segmentation-offload",
    "generic-receive-offload",
];

/// `(feature, on)` for each of [`OFFLOADS`] that is on and can be changed (not `[fixed]`),
/// from `ethtool -k` output.
pub fn changeable_offloads_on(ethtool_k: &str) -> Vec<String> {
    ethtool_k
        .lines()
        .filter_map(|l| {
            let (name, value) = l.trim().split_once(": ")?;
            (OFFLOADS.contains(&name) && value.trim() == "on").then(|| name.to_string())
        })
        .collect()
}

/// The short names `ethtool -K` takes.
fn short(feature: &str) -> &str {
    match feature {
        "generic-segmentation-offload" => "gso",
        "tcp-segmentation-offload" => "tso",
        "generic-receive-offload" => "gro",
        other => other,
    }
}

/// Switch the [`OFFLOADS`] that are on off; returns the ones that were on.
pub fn offloads_off(ns: &NetNs, dev: &str) -> anyhow::Result<Vec<String>> {
    let on = changeable_offloads_on(&run(ns, "ethtool", &["-k", dev])?);
    if !on.is_empty() {
        let mut args = vec!["-K", dev];
        for f in &on {
            args.push(short(f));
            args.push("off");
        }
        run(ns, "ethtool", &args)?;
    }
    Ok(on)
}

/// Switch `features` on again.
pub fn offloads_on(ns: &NetNs, dev: &str, features: &[String]) -> anyhow::Result<()> {
    if features.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-K", dev];
    for f in features {
        args.push(short(f));
        args.push("on");
    }
    run(ns, "ethtool", &args).map(|_| ())
}

/// Whether `ns` has the table `family name`.
pub fn has_nft_table(ns: &NetNs, family: &str, name: &str) -> anyhow::Result<bool> {
    let list = run(ns, "nft", &["list", "tables"])?;
    Ok(list
        .lines()
        .any(|l| l.trim() == format!("table {family} {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changeable_offloads_that_are_on() {
        let k = "Features for eth0:\ntcp-segmentation-offload: on\n\ttx-tcp-segmentation: on\ngeneric-segmentation-offload: on\ngeneric-receive-offload: off\nlarge-receive-offload: off [fixed]\n";
        assert_eq!(
            changeable_offloads_on(k),
            ["tcp-segmentation-offload", "generic-segmentation-offload"]
        );
        let fixed = "generic-segmentation-offload: on [fixed]\n";
        assert!(changeable_offloads_on(fixed).is_empty());
    }
}
