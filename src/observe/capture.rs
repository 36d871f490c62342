//! The kernel side of `kemu capture`: one `AF_PACKET` socket per capture point, opened inside
//! the point's network namespace (bound to one device, or to all of them), read on a thread of
//! its own with the kernel's timestamps (`SO_TIMESTAMPNS`). No tcpdump, no BPF: an optional
//! filter on addresses and ports ([`Filter`], pure) is applied in userspace, to the outer
//! packet and to the one inside a VXLAN datagram.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use super::pcapng::Direction;
use crate::netns::NetNs;

/// VXLAN's UDP ports: flannel's (8472) and the IANA one.
const VXLAN_PORTS: [u16; 2] = [8472, 4789];
/// The longest frame kept.
pub const SNAP_LEN: usize = 262_144;
/// `PACKET_OUTGOING` (`include/uapi/linux/if_packet.h`).
const PACKET_OUTGOING: u8 = 4;

/// Which packets to keep: every criterion given must hold for the outer packet or, for a
/// VXLAN datagram, the inner one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The packet's source or destination is one of these.
    pub hosts: Vec<IpAddr>,
    /// Its TCP/UDP source or destination port is one of these.
    pub ports: Vec<u16>,
    /// Its IP protocol (6 TCP, 17 UDP, 1 ICMP).
    pub protocol: Option<u8>,
}

/// The IPv4 fields a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv4Fields {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ports: Option<(u16, u16)>,
    /// Where the L4 payload starts in the frame.
    payload: usize,
}

fn ipv4_of(frame: &[u8]) -> Option<Ipv4Fields> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    // One 802.1Q tag.
    if ethertype == 0x8100 {
        at += 4;
        ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    }
    if ethertype != 0x0800 {
        return None;
    }
    let ip = at + 2;
    let ihl = ((*frame.get(ip)? & 0x0f) as usize) * 4;
    let protocol = *frame.get(ip + 9)?;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(frame.get(ip + 12..ip + 16)?).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(frame.get(ip + 16..ip + 20)?).ok()?);
    let fragment_offset = u16::from_be_bytes(frame.get(ip + 6..ip + 8)?.try_into().ok()?) & 0x1fff;
    let l4 = ip + ihl;
    let ports = if (protocol == 6 || protocol == 17) && fragment_offset == 0 {
        let sport = u16::from_be_bytes(frame.get(l4..l4 + 2)?.try_into().ok()?);
        let dport = u16::from_be_bytes(frame.get(l4 + 2..l4 + 4)?.try_into().ok()?);
        Some((sport, dport))
    } else {
        None
    };
    Some(Ipv4Fields {
        src,
        dst,
        protocol,
        ports,
        payload: l4,
    })
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.ports.is_empty() && self.protocol.is_none()
    }

    fn matches_fields(&self, f: &Ipv4Fields) -> bool {
        let host = self.hosts.is_empty()
            || self
                .hosts
                .iter()
                .any(|h| *h == IpAddr::V4(f.src) || *h == IpAddr::V4(f.dst));
        let port = self.ports.is_empty()
            || f.ports
                .is_some_and(|(s, d)| self.ports.contains(&s) || self.ports.contains(&d));
        let protocol = self.protocol.is_none_or(|p| p == f.protocol);
        host && port && protocol
    }

    /// Whether an Ethernet frame passes.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(outer) = ipv4_of(frame) else {
            return false;
        };
        if self.matches_fields(&outer) {
            return true;
        }
        // VXLAN: UDP header (8) and VXLAN header (8), then the inner Ethernet frame.
        match outer.ports {
            Some((_, dport)) if outer.protocol == 17 && VXLAN_PORTS.contains(&dport) => frame
                .get(outer.payload + 16..)
                .and_then(ipv4_of)
                .is_some_and(|inner| self.matches_fields(&inner)),
            _ => false,
        }
    }
}

/// Where to capture: a network namespace and one device of it, or all but loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePoint {
    /// Names the interfaces in the file: `<label>:<device>`.
    pub label: String,
    pub netns: String,
    pub dev: Option<String>,
}

/// One packet, as a capture thread hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Nanoseconds since the epoch (the kernel's receive time).
    pub ns: u64,
    /// `<label>:<device>`.
    pub interface: String,
    pub direction: Direction,
    pub data: Vec<u8>,
    pub original_len: u32,
}

fn last_os_error<T>() -> std::io::Result<T> {
    Err(std::io::Error::last_os_error())
}

/// A packet socket of the calling thread's namespace, bound to `dev` (all devices if none).
fn open_socket(dev: Option<&str>) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls; the descriptor is owned right away.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol as libc::c_int,
        );
        if fd < 0 {
            return last_os_error();
        }
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let ifindex = match dev {
        Some(dev) => {
            let name = std::ffi::CString::new(dev)?;
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no device {dev}"),
                ));
            }
            index as i32
        }
        None => 0,
    };
    // SAFETY: a zeroed sockaddr_ll with the fields bind reads set.
    unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        let rc = libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        if rc != 0 {
            return last_os_error();
        }
        // The kernel's time of each packet, as it arrived or left (SCM_TIMESTAMPNS).
        let on: libc::c_int = 1;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // A large queue: bursts while the writer is busy are not lost (force: root).
        let size: libc::c_int = 8 << 20;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

fn interface_name(index: i32, names: &mut HashMap<i32, String>) -> String {
    names
        .entry(index)
        .or_insert_with(|| {
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname requires.
            let p = unsafe { libc::if_indextoname(index as u32, buf.as_mut_ptr()) };
            if p.is_null() {
                format!("if{index}")
            } else {
                // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
                unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
        .clone()
}

/// Read packets of `point` until `stop` is set, handing those that pass `filter` to `tx`.
/// Runs inside the point's namespace; returns once stopped (or the receiver is gone).
pub fn capture(
    point: &CapturePoint,
    filter: &Filter,
    stop: &AtomicBool,
    ready: &(dyn Fn() + Sync),
    tx: Sender<Captured>,
) -> anyhow::Result<()> {
    let ns = NetNs::open(&point.netns)?;
    ns.run(|| {
        use std::os::fd::AsRawFd;
        let socket = open_socket(point.dev.as_deref())?;
        ready();
        let fd = socket.as_raw_fd();
        let mut names = HashMap::new();
        let mut buf = vec![0u8; SNAP_LEN];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd that lives for the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            // SAFETY: recvmsg into buffers that live for the call; the address is a
            // sockaddr_ll, as packet sockets return; the control messages are read with the
            // CMSG macros within the length the kernel set.
            let (len, addr, stamp) = unsafe {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                let mut control = [0u64; 16];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control);
                let len = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC | libc::MSG_DONTWAIT);
                let mut stamp = None;
                if len >= 0 {
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::SOL_SOCKET
                            && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                        {
                            let ts: libc::timespec =
                                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                            stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                }
                (len, addr, stamp)
            };
            if len < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e);
            }
            let original_len = len as usize;
            let data = &buf[..original_len.min(buf.len())];
            let interface = interface_name(addr.sll_ifindex, &mut names);
            // Every device but loopback, unless one was named (loopback shows each packet
            // twice).
            if point.dev.is_none() && interface == "lo" {
                continue;
            }
            if !filter.matches(data) {
                continue;
            }
            let ns = stamp.unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
            let captured = Captured {
                ns,
                interface: format!("{}:{interface}", point.label),
                direction: if addr.sll_pkttype == PACKET_OUTGOING {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                data: data.to_vec(),
                original_len: original_len as u32,
            };
            if tx.send(captured).is_err() {
                break;
            }
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP header.
    fn frame(src: [u8; 4], dst: [u8; 4], protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend(ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    #[test]
    fn filters_look_at_outer_and_vxlan_inner_packets() {
        let syn = frame([172, 16, 2, 2], [192, 168, 3, 91], 6, 40000, 8001);
        // The same packet DNATed and sent through flannel.1: VXLAN in UDP 8472.
        let inner = frame([172, 16, 2, 2], [172, 16, 1, 2], 6, 40000, 80);
        let mut vxlan = frame([192, 168, 0, 202], [192, 168, 0, 201], 17, 51000, 8472);
        vxlan.truncate(14 + 20 + 8);
        vxlan.extend_from_slice(&[8, 0, 0, 0, 0, 0, 1, 0]);
        vxlan.extend(inner);
        let arp = {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&0x0806u16.to_be_bytes());
            f.extend_from_slice(&[0; 28]);
            f
        };
        let f = |hosts: &[&str], ports: &[u16], protocol: Option<u8>| Filter {
            hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            ports: ports.to_vec(),
            protocol,
        };
        assert!(Filter::default().matches(&arp));
        assert!(f(&["192.168.3.91"], &[], None).matches(&syn));
        assert!(!f(&["192.168.3.91"], &[], None).matches(&vxlan));
        assert!(
            f(&["172.16.1.2"], &[80], Some(6)).matches(&vxlan),
            "inner packet"
        );
        assert!(f(&[], &[8472], None).matches(&vxlan), "outer port");
        assert!(
            !f(&[], &[80], Some(17)).matches(&vxlan),
            "TCP inside, UDP outside"
        );
        assert!(!f(&[], &[8001], None).matches(&arp));
        assert!(f(&[], &[8001, 80], None).matches(&syn));
    }
}
