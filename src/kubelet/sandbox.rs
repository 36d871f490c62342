//! A pod's network sandbox: its own network namespace `kemu-<lab>-pod-<id>`, a veth whose host
//! end is a port of the host's `cbr0` (hairpin on, as kubelet's hairpin-veth mode does) and
//! whose pod end is `eth0` with an address from the host's subnet, loopback, and a default
//! route via the bridge. The namespace is journaled in the lab's state before it is created,
//! so `kemu down` removes it even if the kubelet dies.

use std::net::Ipv4Addr;

use anyhow::Context;
use ipnet::Ipv4Net;

use super::ipam::Ipam;
use crate::lab::state::{Journal, JournalEntry, LabDir};
use crate::netlink::{Mac, NetOp, Netlink};
use crate::netns::{self, NetNs};
use crate::overlay::{POD_BRIDGE, UNDERLAY_DEVICE};

/// Sysctls of a pod namespace. Like Docker, let unprivileged containers bind ports below 1024
/// (nginx listens on 80 as an unprivileged user) and use ping sockets.
pub const POD_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "0 2147483647"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// Where pods of one host live.
#[derive(Debug, Clone)]
pub struct PodNetConfig {
    pub lab: String,
    pub subnet: Ipv4Net,
    /// MTU of the pod network (the overlay's).
    pub mtu: u32,
}

/// The network of a running pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub host_veth: String,
}

/// A short stable id of a pod uid (namespace and interface names derive from it).
pub fn short_id(uid: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(uid.as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The namespace of a pod.
pub fn pod_namespace(lab: &str, uid: &str) -> String {
    format!("kemu-{lab}-pod-{}", short_id(uid))
}

/// The host end of a pod's veth (at most 15 bytes).
pub fn host_veth(uid: &str) -> String {
    format!("veth{}", short_id(uid))
}

/// The operations that wire a pod: the veth in the host namespace, then the pod's side.
pub fn wiring(
    cfg: &PodNetConfig,
    uid: &str,
    label: &str,
    ip: Ipv4Addr,
) -> (Vec<NetOp>, Vec<NetOp>) {
    let veth = host_veth(uid);
    let gateway = Ipv4Addr::from(u32::from(cfg.subnet.network()) + 1);
    let host = vec![
        NetOp::Veth {
            name: veth.clone().into(),
            mac: Mac::derive(&format!("{uid}/host")),
            peer: UNDERLAY_DEVICE.into(),
            peer_mac: Mac::derive(&format!("{uid}/eth0")),
            peer_ns: pod_namespace(&cfg.lab, uid),
            mtu: cfg.mtu,
            master: Some(POD_BRIDGE.into()),
            alias: format!("kemu:{}:pod:{label}", cfg.lab),
        },
        NetOp::Hairpin { dev: veth.into() },
    ];
    let pod = vec![
        NetOp::Up { dev: "lo".into() },
        NetOp::Address {
            dev: UNDERLAY_DEVICE.into(),
            addr: Ipv4Net::new(ip, cfg.subnet.prefix_len()).expect("valid prefix"),
        },
        NetOp::Up {
            dev: UNDERLAY_DEVICE.into(),
        },
        NetOp::Route {
            dst: "0.0.0.0/0".parse().expect("constant"),
            via: Some(gateway),
            dev: Some(UNDERLAY_DEVICE.into()),
            onlink: false,
        },
    ];
    (host, pod)
}

/// Create a pod's sandbox. `host` is a netlink handle on the host's namespace; `label` is
/// `<namespace>/<name>`, for the veth's alias. `adopt`: the network namespace of the
/// runtime's sandbox container (Docker), pinned and wired instead of a new one.
pub async fn create(
    host: &Netlink,
    dir: &LabDir,
    cfg: &PodNetConfig,
    ipam: &Ipam,
    uid: &str,
    label: &str,
    adopt: Option<&std::path::Path>,
) -> anyhow::Result<PodNetwork> {
    let namespace = pod_namespace(&cfg.lab, uid);
    Journal::open(dir)?.append(&[JournalEntry::Namespace(namespace.clone())])?;
    let result = async {
        let ip = ipam
            .allocate(uid)
            .with_context(|| format!("allocate an IP for pod {label}"))?;
        let setup = || {
            netns::write_sysctls(POD_SYSCTLS)?;
            crate::netlink::open_socket()
        };
        let (ns, socket) = match adopt {
            None => NetNs::create(&namespace, setup)?,
            Some(source) => NetNs::adopt(&namespace, source, setup)?,
        };
        let pod = Netlink::from_socket(&namespace, socket)?;
        let (host_ops, pod_ops) = wiring(cfg, uid, label, ip);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
        for op in &host_ops {
            host.apply(op, |name| (name == namespace).then_some(fd))
                .await?;
        }
        for op in &pod_ops {
            pod.apply(op, |_| None).await?;
        }
        anyhow::Ok(PodNetwork {
            namespace: namespace.clone(),
            ip,
            host_veth: host_veth(uid),
        })
    }
    .await;
    if result.is_err() {
        let _ = destroy(host, cfg, ipam, uid).await;
    }
    result
}

/// The sandbox of a pod that already exists (after a kubelet restart), if it is complete.
pub fn existing(cfg: &PodNetConfig, ipam: &Ipam, uid: &str) -> Option<PodNetwork> {
    let namespace = pod_namespace(&cfg.lab, uid);
    if !netns::exists(&namespace) {
        return None;
    }
    let ip = ipam.find(uid)?;
    Some(PodNetwork {
        namespace,
        ip,
        host_veth: host_veth(uid),
    })
}

/// Remove a pod's sandbox: the host veth (synchronously, so it is gone when this returns), the
/// namespace, and the address. Missing pieces are fine.
pub async fn destroy(
    host: &Netlink,
    cfg: &PodNetConfig,
    ipam: &Ipam,
    uid: &str,
) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let veth = NetOp::Bridge {
        name: host_veth(uid).into(),
        mac: Mac([0; 6]),
        mtu: 0,
    };
    if let Err(e) = host.revert(&veth).await {
        errors.push(e.to_string());
    }
    if let Err(e) = netns::delete(&pod_namespace(&cfg.lab, uid)) {
        errors.push(e.to_string());
    }
    if let Err(e) = ipam.release(uid) {
        errors.push(format!("release the IP of pod {uid}: {e}"));
    }
    anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(())
}
