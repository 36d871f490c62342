//! The agent's thin kernel layer, in its own network namespace: apply a rendered rule set
//! (one `iptables-restore` or one `nft -f`), read the live iptables state, remove everything
//! a mode made, and the sysctls each mode needs.

use std::time::Instant;

use super::rules;
use crate::firewall;
use crate::proxy::{ProxyMode, RESTORE_ARGS};

/// `iptables-save` of every table.
pub fn iptables_save() -> anyhow::Result<String> {
    firewall::iptables_save(None)
}

/// Apply one restore input atomically (`iptables-restore --noflush --counters`).
pub fn iptables_restore(input: &str) -> anyhow::Result<()> {
    let mut cmd = firewall::command(None, "iptables-restore");
    cmd.args(RESTORE_ARGS);
    firewall::run_with_input(cmd, input).map(|_| ())
}

/// Apply an nft script atomically (`nft -f -`).
pub fn nft_apply(input: &str) -> anyhow::Result<()> {
    firewall::nft_apply(None, input)
}

/// Deleting a table that may not exist: adding it first makes the pair always succeed.
const NFT_CLEANUP: &str = "add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip6 kube-proxy\ndelete table ip6 kube-proxy\n";

/// Remove every rule, chain and table of `mode`, and (with `sysctls`, kemu's own clean
/// switch; kube-proxy's cleanup leaves them) put its sysctls back. Returns what was removed,
/// for the log.
pub fn cleanup(mode: ProxyMode, sysctls: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    let what = match mode {
        ProxyMode::Nftables => {
            nft_apply(NFT_CLEANUP)?;
            "table kube-proxy".to_string()
        }
        ProxyMode::Userspace | ProxyMode::Iptables => {
            let save = iptables_save()?;
            match rules::cleanup_restore(mode, &save) {
                Some(script) => {
                    iptables_restore(&script)?;
                    let chains = script.lines().filter(|l| l.starts_with("-X ")).count();
                    let jumps = script.lines().filter(|l| l.starts_with("-D ")).count();
                    format!("{chains} chains, {jumps} jump rules")
                }
                None => "nothing".to_string(),
            }
        }
    };
    if sysctls {
        restore_sysctls(mode);
    }
    Ok(format!(
        "{what} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    ))
}

/// conntrack timeouts kube-proxy sets in iptables and nftables modes (its defaults
/// `conntrack.tcpEstablishedTimeout: 24h`, `tcpCloseWaitTimeout: 1h`); these are per network
/// namespace, unlike `nf_conntrack_max`, which only the initial namespace may set and which
/// kemu therefore leaves alone.
const CONNTRACK: [(&str, &str, &str); 2] = [
    (
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "86400",
        "432000",
    ),
    (
        "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
        "3600",
        "60",
    ),
];

/// `route_localnet=1` lets NodePorts answer on 127.0.0.1 (iptables mode, localhost NodePorts).
const ROUTE_LOCALNET: (&str, &str, &str) = ("net.ipv4.conf.all.route_localnet", "1", "0");

/// (sysctl, value the mode sets, kernel default) for each mode. The 2015 userspace proxier
/// set none.
pub fn mode_sysctls(mode: ProxyMode) -> Vec<(&'static str, &'static str, &'static str)> {
    match mode {
        ProxyMode::Userspace => Vec::new(),
        ProxyMode::Iptables => {
            let mut v = vec![ROUTE_LOCALNET];
            v.extend(CONNTRACK);
            v
        }
        ProxyMode::Nftables => CONNTRACK.to_vec(),
    }
}

fn write_sysctl(key: &str, value: &str) {
    if let Err(e) = crate::netns::write_sysctls(&[(key, value)]) {
        tracing::warn!("{e}");
    }
}

/// Set the mode's sysctls in this namespace: `route_localnet` only when localhost NodePorts
/// are on (kube-proxy's `NewProxier`: `--iptables-localhost-nodeports` and loopback among
/// the NodePort addresses).
pub fn apply_sysctls(mode: ProxyMode, node: &crate::proxy::NodeContext) {
    for (key, value, _) in mode_sysctls(mode) {
        if key == ROUTE_LOCALNET.0 && !node.effective_localhost_node_ports() {
            continue;
        }
        write_sysctl(key, value);
    }
}

/// Put the mode's sysctls back to the kernel defaults (a lab host's namespace starts with
/// them), so that a mode switch leaves nothing of the old mode behind.
pub fn restore_sysctls(mode: ProxyMode) {
    for (key, _, default) in mode_sysctls(mode) {
        write_sysctl(key, default);
    }
}

/// `net.netfilter.nf_conntrack_tcp_be_liberal` != 0 (kube-proxy then skips its INVALID drop).
pub fn conntrack_tcp_be_liberal() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
        .map(|v| v.trim() != "0")
        .unwrap_or(false)
}
