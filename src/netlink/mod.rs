//! kemu's netlink facade: the few kernel operations a lab needs, as data (`NetOp`) and as
//! verbs on a `Netlink` handle bound to one network namespace.
//!
//! rtnetlink lives behind this module so that its frequent breaking releases touch one file.
//! A handle is opened by creating the netlink socket *inside* the target namespace (on a
//! short-lived thread, see `netns`); the socket stays bound to that namespace, so every later
//! request goes there from any thread, and the root namespace is never touched.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Mutex;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

/// An interface name; the fixed ones (`eth0`, `cbr0`, `flannel.1`) need no allocation.
pub type IfName = Cow<'static, str>;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable, locally administered unicast MAC derived from a key, so that the same
    /// topology always gives the same addresses.
    pub fn derive(key: &str) -> Mac {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key.as_bytes());
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&digest[..6]);
        mac[0] = (mac[0] & 0xfe) | 0x02;
        Mac(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(Mac(mac))
    }
}

/// One kernel operation inside a namespace. Pure data: plans are made of these, printed by
/// `--dry-run` as the equivalent `ip` command, and applied by `Netlink::apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetOp {
    /// `ip link add NAME type bridge`, up.
    Bridge { name: IfName, mac: Mac, mtu: u32 },
    /// A veth pair created here with its peer placed directly in `peer_ns`; this end is set up
    /// (and enslaved to `master`), the peer is configured by ops in its own namespace.
    Veth {
        name: IfName,
        mac: Mac,
        peer: IfName,
        peer_mac: Mac,
        peer_ns: String,
        mtu: u32,
        master: Option<IfName>,
        /// Ownership mark and a readable hint in `ip link` output.
        alias: String,
    },
    /// flannel's VXLAN device (`nolearning`, no multicast group).
    Vxlan {
        name: IfName,
        vni: u32,
        port: u16,
        local: Ipv4Addr,
        dev: IfName,
        mac: Mac,
        mtu: u32,
    },
    /// `ip link set DEV up`.
    Up { dev: IfName },
    /// `ip link set DEV type bridge_slave hairpin on`: a pod may reach itself through a
    /// Service (kubelet's hairpin-veth mode).
    Hairpin { dev: IfName },
    /// `ip addr add ADDR dev DEV`.
    Address { dev: IfName, addr: Ipv4Net },
    /// `ip route replace DST [via GW] [dev DEV] [onlink]`.
    Route {
        dst: Ipv4Net,
        via: Option<Ipv4Addr>,
        dev: Option<IfName>,
        onlink: bool,
    },
    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    Neighbour { dev: IfName, ip: Ipv4Addr, mac: Mac },
    /// `bridge fdb replace MAC dev DEV dst IP self permanent`.
    Fdb {
        dev: IfName,
        mac: Mac,
        dst: Ipv4Addr,
    },
}

impl fmt::Display for NetOp {
    /// The `ip`/`bridge` command that does the same (without the `-n NS` prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetOp::Bridge { name, mac, mtu } => {
                write!(
                    f,
                    "ip link add {name} address {mac} mtu {mtu} type bridge && ip link set {name} up"
                )
            }
            NetOp::Veth {
                name,
                mac,
                peer,
                peer_mac,
                peer_ns,
                mtu,
                master,
                alias,
            } => {
                write!(
                    f,
                    "ip link add {name} address {mac} mtu {mtu} type veth peer name {peer} address {peer_mac} netns {peer_ns} && ip link set {name} alias {alias:?}"
                )?;
                if let Some(master) = master {
                    write!(f, " master {master}")?;
                }
                write!(f, " up")
            }
            NetOp::Vxlan {
                name,
                vni,
                port,
                local,
                dev,
                mac,
                mtu,
            } => write!(
                f,
                "ip link add {name} address {mac} mtu {mtu} type vxlan id {vni} local {local} dev {dev} dstport {port} nolearning"
            ),
            NetOp::Up { dev } => write!(f, "ip link set {dev} up"),
            NetOp::Hairpin { dev } => write!(f, "ip link set {dev} type bridge_slave hairpin on"),
            NetOp::Address { dev, addr } => write!(f, "ip addr add {addr} dev {dev}"),
            NetOp::Route {
                dst,
                via,
                dev,
                onlink,
            } => {
                write!(f, "ip route replace {}", route_dst(dst))?;
                if let Some(via) = via {
                    write!(f, " via {via}")?;
                }
                if let Some(dev) = dev {
                    write!(f, " dev {dev}")?;
                }
                if *onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
            NetOp::Neighbour { dev, ip, mac } => {
                write!(
                    f,
                    "ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
                )
            }
            NetOp::Fdb { dev, mac, dst } => {
                write!(
                    f,
                    "bridge fdb replace {mac} dev {dev} dst {dst} self permanent"
                )
            }
        }
    }
}

fn route_dst(dst: &Ipv4Net) -> String {
    if dst.prefix_len() == 0 {
        "default".to_string()
    } else {
        dst.to_string()
    }
}

/// A failed netlink operation, with the operation and namespace named.
#[derive(Debug, thiserror::Error)]
#[error("{op} (in namespace {ns}): {kind}")]
pub struct NetlinkError {
    pub ns: String,
    pub op: String,
    pub kind: ErrorKind,
}

/// What went wrong, by errno, so callers can match instead of comparing strings.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("already exists")]
    AlreadyExists,
    #[error("no such device or entry")]
    NotFound,
    #[error("permission denied: kemu needs root (CAP_NET_ADMIN)")]
    Permission,
    #[error("network unreachable: the gateway is not on a directly connected network")]
    Unreachable,
    #[error("{0}")]
    Other(String),
}

impl NetlinkError {
    /// "Already gone" counts as success in teardown.
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, ErrorKind::NotFound)
    }
    pub fn is_exists(&self) -> bool {
        matches!(self.kind, ErrorKind::AlreadyExists)
    }
}

fn classify(err: rtnetlink::Error) -> ErrorKind {
    if let rtnetlink::Error::NetlinkError(msg) = &err
        && let Some(code) = msg.code
    {
        return match -code.get() {
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL => ErrorKind::NotFound,
            libc::EPERM | libc::EACCES => ErrorKind::Permission,
            libc::ENETUNREACH => ErrorKind::Unreachable,
            errno => ErrorKind::Other(std::io::Error::from_raw_os_error(errno).to_string()),
        };
    }
    ErrorKind::Other(err.to_string())
}

/// Counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Open a NETLINK_ROUTE socket in the calling thread's network namespace. Call it on a thread
/// that has entered the target namespace; turn it into a handle with `Netlink::from_socket`.
pub fn open_socket() -> std::io::Result<Socket> {
    Socket::new(NETLINK_ROUTE)
}

/// A netlink handle bound to one namespace.
pub struct Netlink {
    ns: String,
    handle: rtnetlink::Handle,
    /// Interface indices by name; indices are stable while a device exists.
    indices: Mutex<HashMap<String, u32>>,
}

impl Netlink {
    /// Wrap a socket opened inside namespace `ns`. Must be called within a tokio runtime: the
    /// connection task is spawned on it.
    pub fn from_socket(ns: &str, socket: Socket) -> std::io::Result<Netlink> {
        socket.set_non_blocking(true)?;
        // SAFETY: the fd comes from a socket we own and hand over exactly once.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink {
            ns: ns.to_string(),
            handle,
            indices: Mutex::new(HashMap::new()),
        })
    }

    /// Open a handle on a namespace.
    pub fn open(ns: &crate::netns::NetNs) -> anyhow::Result<Netlink> {
        let socket = ns.run(open_socket)?;
        Ok(Netlink::from_socket(ns.name(), socket)?)
    }

    /// The namespace this handle is bound to.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn error(&self, op: impl fmt::Display, err: rtnetlink::Error) -> NetlinkError {
        NetlinkError {
            ns: self.ns.clone(),
            op: op.to_string(),
            kind: classify(err),
        }
    }

    /// Index of an interface, or `None` if it does not exist.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        if let Some(index) = self.indices.lock().expect("index cache").get(name) {
            return Ok(Some(*index));
        }
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => {
                let index = link.header.index;
                self.indices
                    .lock()
                    .expect("index cache")
                    .insert(name.to_string(), index);
                Ok(Some(index))
            }
            Ok(None) => Ok(None),
            Err(err) => match classify(err) {
                ErrorKind::NotFound => Ok(None),
                kind => Err(NetlinkError {
                    ns: self.ns.clone(),
                    op: format!("look up link {name}"),
                    kind,
                }),
            },
        }
    }

    async fn require(&self, name: &str) -> Result<u32, NetlinkError> {
        self.index(name).await?.ok_or_else(|| NetlinkError {
            ns: self.ns.clone(),
            op: format!("look up link {name}"),
            kind: ErrorKind::NotFound,
        })
    }

    /// Forget a cached index (after a device was deleted or recreated).
    fn forget(&self, name: &str) {
        self.indices.lock().expect("index cache").remove(name);
    }

    /// Apply one operation. `peer_fd` resolves a namespace name to an open fd (veths only).
    pub async fn apply(
        &self,
        op: &NetOp,
        peer_fd: impl Fn(&str) -> Option<i32>,
    ) -> Result<(), NetlinkError> {
        let h = &self.handle;
        match op {
            NetOp::Bridge { name, mac, mtu } => {
                let msg = LinkBridge::new(name)
                    .address(mac.0.to_vec())
                    .mtu(*mtu)
                    .up()
                    .build();
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Veth {
                name,
                mac,
                peer,
                peer_mac,
                peer_ns,
                mtu,
                master,
                alias,
            } => {
                let fd = peer_fd(peer_ns).ok_or_else(|| NetlinkError {
                    ns: self.ns.clone(),
                    op: op.to_string(),
                    kind: ErrorKind::Other(format!("namespace {peer_ns} is not open")),
                })?;
                let peer_msg: LinkMessage = LinkUnspec::new_with_name(peer)
                    .address(peer_mac.0.to_vec())
                    .mtu(*mtu)
                    .setns_by_fd(fd)
                    .build();
                let mut builder = LinkVeth::new(name, peer)
                    .address(mac.0.to_vec())
                    .mtu(*mtu)
                    .append_extra_attribute(LinkAttribute::IfAlias(alias.clone()))
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                    .up();
                if let Some(master) = master {
                    builder = builder.controller(self.require(master).await?);
                }
                h.link()
                    .add(builder.build())
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Vxlan {
                name,
                vni,
                port,
                local,
                dev,
                mac,
                mtu,
            } => {
                let msg = LinkVxlan::new(name, *vni)
                    .dev(self.require(dev).await?)
                    .local(*local)
                    .port(*port)
                    .learning(false)
                    .address(mac.0.to_vec())
                    .mtu(*mtu)
                    .up()
                    .build();
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Up { dev } => {
                let msg = LinkUnspec::new_with_index(self.require(dev).await?)
                    .up()
                    .build();
                h.link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Hairpin { dev } => {
                let msg = LinkBridgePort::new(self.require(dev).await?)
                    .hairpin(true)
                    .build();
                h.link()
                    .set_port(msg)
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Address { dev, addr } => {
                let index = self.require(dev).await?;
                match h
                    .address()
                    .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
                    .execute()
                    .await
                {
                    Err(e) => match self.error(op, e) {
                        err if err.is_exists() => Ok(()),
                        err => Err(err),
                    },
                    Ok(()) => Ok(()),
                }
            }
            NetOp::Route {
                dst,
                via,
                dev,
                onlink,
            } => {
                let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len());
                if let Some(via) = via {
                    route = route.gateway(*via);
                } else {
                    route = route.scope(RouteScope::Link);
                }
                if let Some(dev) = dev {
                    route = route.output_interface(self.require(dev).await?);
                }
                if *onlink {
                    route = route.onlink();
                }
                h.route()
                    .add(route.build())
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| self.error(op, e))
            }
            NetOp::Neighbour { dev, ip, mac } => h
                .neighbours()
                .add(self.require(dev).await?, IpAddr::V4(*ip))
                .link_layer_address(&mac.0)
                .replace()
                .execute()
                .await
                .map_err(|e| self.error(op, e)),
            NetOp::Fdb { dev, mac, dst } => h
                .neighbours()
                .add_bridge(self.require(dev).await?, &mac.0)
                .destination(IpAddr::V4(*dst))
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(|e| self.error(op, e)),
        }
    }

    /// Undo an operation (used by the overlay agent when a peer leaves). Missing entries are a
    /// success.
    pub async fn revert(&self, op: &NetOp) -> Result<(), NetlinkError> {
        let h = &self.handle;
        let result = match op {
            NetOp::Bridge { name, .. } | NetOp::Veth { name, .. } | NetOp::Vxlan { name, .. } => {
                let Some(index) = self.index(name).await? else {
                    return Ok(());
                };
                self.forget(name);
                h.link().del(index).execute().await
            }
            NetOp::Up { .. } | NetOp::Hairpin { .. } | NetOp::Address { .. } => return Ok(()),
            NetOp::Route { dst, via, dev, .. } => {
                let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len());
                if let Some(via) = via {
                    route = route.gateway(*via);
                }
                if let Some(dev) = dev {
                    match self.index(dev).await? {
                        Some(index) => route = route.output_interface(index),
                        None => return Ok(()),
                    }
                }
                h.route().del(route.build()).execute().await
            }
            NetOp::Neighbour { dev, ip, mac } => {
                let Some(index) = self.index(dev).await? else {
                    return Ok(());
                };
                let mut req = h
                    .neighbours()
                    .add(index, IpAddr::V4(*ip))
                    .link_layer_address(&mac.0);
                let msg = req.message_mut().clone();
                h.neighbours().del(msg).execute().await
            }
            NetOp::Fdb { dev, mac, dst } => {
                let Some(index) = self.index(dev).await? else {
                    return Ok(());
                };
                let mut req = h
                    .neighbours()
                    .add_bridge(index, &mac.0)
                    .destination(IpAddr::V4(*dst))
                    .flags(NeighbourFlags::Own);
                let msg = req.message_mut().clone();
                h.neighbours().del(msg).execute().await
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => match self.error(format!("undo {op}"), e) {
                err if err.is_not_found() => Ok(()),
                err => Err(err),
            },
        }
    }

    /// Packet and byte counters of an interface.
    pub async fn counters(&self, name: &str) -> Result<Option<LinkCounters>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(None),
            Err(e) => match self.error(format!("read counters of {name}"), e) {
                err if err.is_not_found() => return Ok(None),
                err => return Err(err),
            },
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(LinkCounters {
                rx_packets: s.rx_packets,
                tx_packets: s.tx_packets,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
            }),
            _ => None,
        }))
    }

    /// MAC address of an interface.
    pub async fn mac(&self, name: &str) -> Result<Option<Mac>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(None),
            Err(e) => match self.error(format!("read link {name}"), e) {
                err if err.is_not_found() => return Ok(None),
                err => return Err(err),
            },
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(bytes);
                Some(Mac(mac))
            }
            _ => None,
        }))
    }

    /// Names of all interfaces in the namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        loop {
            match links.try_next().await {
                Ok(Some(link)) => names.extend(link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })),
                Ok(None) => return Ok(names),
                Err(e) => return Err(self.error("list links", e)),
            }
        }
    }
}
