//! The agent's netfilter netlink layer (`NETLINK_NETFILTER`), in its own network namespace:
//! list and delete conntrack entries (kube-proxy ≥ 1.32 does the same through
//! vishvananda/netlink, `pkg/proxy/conntrack/conntrack.go`) and create and read the nfacct
//! counters its rules count packets with (`pkg/proxy/util/nfacct`).
//!
//! Deletes are sent as one batch of messages in a few datagrams and acknowledged together,
//! rather than one round trip per entry (upstream's per-flow deletes made cleanup slow,
//! issue #135323).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::conntrack::Flow;
use super::conntrack::index::FlowEvent;

/// `NFNL_SUBSYS_ACCT` and its messages (`include/uapi/linux/netfilter/nfnetlink_acct.h`).
const NFNL_SUBSYS_ACCT: u8 = 7;
const NFNL_MSG_ACCT_NEW: u8 = 0;
const NFNL_MSG_ACCT_GET: u8 = 1;
const NFACCT_NAME: u16 = 1;
const NFACCT_PKTS: u16 = 2;
const NFACCT_BYTES: u16 = 3;

/// Messages per datagram of a delete batch (each is about 100 bytes).
const BATCH: usize = 256;

/// A `NETLINK_NETFILTER` socket of the calling thread's network namespace.
pub struct Nfnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    pub fn open() -> io::Result<Nfnl> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Acks carry only the header of the request they answer.
        let _ = socket.set_cap_ack(true);
        Ok(Nfnl {
            socket,
            seq: 0,
            buf: vec![0; 1 << 17],
        })
    }

    fn message(
        &mut self,
        family: NetfilterProtoFamily,
        inner: NetfilterMessageInner,
        flags: u16,
    ) -> NetlinkMessage<NetfilterMessage> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                inner,
            )),
        );
        msg.finalize();
        msg
    }

    fn send_all(&self, msgs: &[NetlinkMessage<NetfilterMessage>]) -> io::Result<()> {
        let len: usize = msgs.iter().map(|m| m.buffer_len()).sum();
        let mut out = vec![0u8; len];
        let mut at = 0;
        for m in msgs {
            let n = m.buffer_len();
            m.serialize(&mut out[at..at + n]);
            at += n;
        }
        self.socket.send(&out, 0)?;
        Ok(())
    }

    /// Receive until `done` says stop; every message is handed to `each`.
    fn receive(
        &mut self,
        mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if !each(msg)? {
                    return Ok(());
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
    }

    /// Every conntrack entry of the IPv4 (or IPv6) table.
    pub fn list_flows(&mut self, ipv6: bool) -> io::Result<Vec<Flow>> {
        Ok(self
            .dump(ipv6)?
            .iter()
            .filter_map(|attrs| parse_flow(attrs))
            .collect())
    }

    /// The attributes of every conntrack entry of the IPv4 (or IPv6) table, as the kernel
    /// sent them (tuples, status, timeout, mark, TCP state).
    pub fn dump(&mut self, ipv6: bool) -> io::Result<Vec<Vec<ConntrackAttribute>>> {
        let family = if ipv6 {
            NetfilterProtoFamily::IPv6
        } else {
            NetfilterProtoFamily::IPv4
        };
        let msg = self.message(
            family,
            ConntrackMessage::Get(Vec::new()).into(),
            NLM_F_REQUEST | NLM_F_DUMP,
        );
        self.send_all(&[msg])?;
        let mut entries = Vec::new();
        self.receive(|msg| match msg.payload {
            NetlinkPayload::Done(_) => Ok(false),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                ..
            }) => {
                entries.push(attrs);
                Ok(true)
            }
            _ => Ok(true),
        })?;
        Ok(entries)
    }

    /// Delete `flows` by their original tuple. Each batch goes in one datagram and only its
    /// last message asks for an ack: the kernel handles a datagram's messages in order and
    /// answers the others only when they fail, so after that ack every failure is queued.
    /// Returns how many the kernel deleted (an entry gone in between is not an error).
    pub fn delete_flows(&mut self, flows: &[Flow]) -> io::Result<usize> {
        let mut deleted = 0;
        for chunk in flows.chunks(BATCH) {
            let msgs: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let family = if f.orig_src.is_ipv6() {
                        NetfilterProtoFamily::IPv6
                    } else {
                        NetfilterProtoFamily::IPv4
                    };
                    let tuple = vec![
                        Tuple::Ip(vec![
                            IPTuple::SourceAddress(f.orig_src),
                            IPTuple::DestinationAddress(f.orig_dst),
                        ]),
                        Tuple::Proto(vec![
                            ProtoTuple::Protocol(Protocol::from(f.protocol)),
                            ProtoTuple::SourcePort(f.orig_sport),
                            ProtoTuple::DestinationPort(f.orig_dport),
                        ]),
                    ];
                    let ack = if i + 1 == chunk.len() { NLM_F_ACK } else { 0 };
                    self.message(
                        family,
                        ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)])
                            .into(),
                        NLM_F_REQUEST | ack,
                    )
                })
                .collect();
            let last_seq = self.seq;
            self.send_all(&msgs)?;
            let mut gone = 0;
            let mut failure = None;
            self.receive(|msg| {
                let seq = msg.header.sequence_number;
                if let NetlinkPayload::Error(e) = msg.payload {
                    match e.code {
                        None => {}
                        Some(code) if -code.get() == libc::ENOENT => gone += 1,
                        Some(_) => failure = Some(e.to_io()),
                    }
                    return Ok(seq != last_seq);
                }
                Ok(true)
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            deleted += chunk.len() - gone;
        }
        Ok(deleted)
    }

    /// Create a conntrack entry for `flow` (the reply tuple comes from its reply source,
    /// with the ports swapped), living `timeout` seconds. For tests and benchmarks: it is
    /// what a DNATed flow leaves in the table.
    pub fn create_flow(&mut self, flow: &Flow, timeout: u32) -> io::Result<()> {
        let family = if flow.orig_src.is_ipv6() {
            NetfilterProtoFamily::IPv6
        } else {
            NetfilterProtoFamily::IPv4
        };
        let tuple = |src, dst, sport, dport| {
            vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress(src),
                    IPTuple::DestinationAddress(dst),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::from(flow.protocol)),
                    ProtoTuple::SourcePort(sport),
                    ProtoTuple::DestinationPort(dport),
                ]),
            ]
        };
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(
                flow.orig_src,
                flow.orig_dst,
                flow.orig_sport,
                flow.orig_dport,
            )),
            ConntrackAttribute::CtaTupleReply(tuple(
                flow.reply_src,
                flow.orig_src,
                flow.orig_dport,
                flow.orig_sport,
            )),
            ConntrackAttribute::CtaTimeout(timeout),
        ];
        let msg = self.message(
            family,
            ConntrackMessage::New(attrs).into(),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        );
        self.send_all(&[msg])?;
        let mut result = Ok(());
        self.receive(|msg| {
            if let NetlinkPayload::Error(e) = msg.payload {
                if e.code.is_some() {
                    result = Err(e.to_io());
                }
                return Ok(false);
            }
            Ok(true)
        })?;
        result
    }

    fn acct(
        &mut self,
        message_type: u8,
        attributes: Vec<DefaultNla>,
        flags: u16,
    ) -> NetlinkMessage<NetfilterMessage> {
        self.message(
            NetfilterProtoFamily::Unspec,
            NetfilterMessageInner::Other {
                subsys: NetfilterSubsystem::Other(NFNL_SUBSYS_ACCT),
                message_type,
                attributes,
            },
            flags,
        )
    }

    /// Create the nfacct counter `name` unless it exists (kube-proxy's `nfacct.Ensure`).
    pub fn ensure_counter(&mut self, name: &str) -> io::Result<()> {
        let msg = self.acct(
            NFNL_MSG_ACCT_NEW,
            vec![name_attribute(name)],
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
        );
        self.send_all(&[msg])?;
        let mut result = Ok(());
        self.receive(|msg| {
            if let NetlinkPayload::Error(e) = msg.payload {
                // EBUSY: it exists already (the kernel only resets it with NLM_F_REPLACE).
                if let Some(code) = e.code
                    && -code.get() != libc::EBUSY
                {
                    result = Err(e.to_io());
                }
                return Ok(false);
            }
            Ok(true)
        })?;
        result
    }

    /// The packets and bytes counted by nfacct counter `name`.
    pub fn counter(&mut self, name: &str) -> io::Result<(u64, u64)> {
        let msg = self.acct(NFNL_MSG_ACCT_GET, vec![name_attribute(name)], NLM_F_REQUEST);
        self.send_all(&[msg])?;
        let mut result = Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no nfacct counter {name}"),
        ));
        self.receive(|msg| match msg.payload {
            NetlinkPayload::Error(e) => {
                if e.code.is_some() {
                    result = Err(e.to_io());
                }
                Ok(false)
            }
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Other { attributes, .. },
                ..
            }) => {
                let value = |kind: u16| {
                    attributes.iter().find(|a| a.kind() == kind).and_then(|a| {
                        let mut v = vec![0u8; a.value_len()];
                        a.emit_value(&mut v);
                        Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
                    })
                };
                result = Ok((
                    value(NFACCT_PKTS).unwrap_or(0),
                    value(NFACCT_BYTES).unwrap_or(0),
                ));
                Ok(false)
            }
            _ => Ok(true),
        })?;
        result
    }
}

/// `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY`
/// (`include/uapi/linux/netfilter/nfnetlink.h`).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// A listener of the conntrack events of the calling thread's network namespace: one message
/// per entry confirmed (with its NATed reply tuple) and per entry destroyed. It never blocks;
/// the owner reads it when its descriptor is readable and before using what it learnt.
pub struct ConntrackEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl ConntrackEvents {
    /// Subscribe, with a receive buffer of `buffer` bytes (events arriving while it is full
    /// are lost, which the next read reports).
    pub fn open(buffer: usize) -> io::Result<ConntrackEvents> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // SO_RCVBUFFORCE (root) may exceed net.core.rmem_max; a plain SO_RCVBUF otherwise.
        if set_int_option(&socket, libc::SO_RCVBUFFORCE, buffer).is_err() {
            set_int_option(&socket, libc::SO_RCVBUF, buffer)?;
        }
        socket.set_non_blocking(true)?;
        socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        socket.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
        Ok(ConntrackEvents {
            socket,
            buf: vec![0; 1 << 17],
        })
    }

    /// Stop or start receiving DESTROY events. While no one listens to them the kernel does
    /// not build them: about half of what a delete costs it.
    pub fn listen_to_destroy(&self, on: bool) -> io::Result<()> {
        if on {
            self.socket.add_membership(NFNLGRP_CONNTRACK_DESTROY)
        } else {
            self.socket.drop_membership(NFNLGRP_CONNTRACK_DESTROY)
        }
    }

    /// Hand every queued event to `each`, in order, until none is left. Returns false when
    /// events were lost since the last read (the buffer overflowed): what `each` saw is then
    /// incomplete.
    pub fn read(&mut self, mut each: impl FnMut(FlowEvent)) -> io::Result<bool> {
        let mut complete = true;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(complete),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    complete = false;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if let NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ct),
                    ..
                }) = msg.payload
                {
                    match ct {
                        ConntrackMessage::New(attrs) => parse_flow(&attrs).map(FlowEvent::New),
                        ConntrackMessage::Delete(attrs) => {
                            parse_flow(&attrs).map(FlowEvent::Destroy)
                        }
                        _ => None,
                    }
                    .map(&mut each);
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
    }
}

impl AsFd for ConntrackEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn set_int_option(socket: &Socket, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `NFACCT_NAME`: the name NUL-terminated, as the kernel's `nla_strscpy` reads it.
fn name_attribute(name: &str) -> DefaultNla {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    DefaultNla::new(NFACCT_NAME, value)
}

/// The flow of a dumped entry: its original tuple and its reply source.
fn parse_flow(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let mut orig = None;
    let mut reply_src = None;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(tuple) => orig = Some(tuple_fields(tuple)),
            ConntrackAttribute::CtaTupleReply(tuple) => reply_src = tuple_fields(tuple).0,
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(protocol), sport, dport) = orig? else {
        return None;
    };
    Some(Flow {
        protocol,
        orig_src: src,
        orig_dst: dst,
        orig_sport: sport.unwrap_or(0),
        orig_dport: dport.unwrap_or(0),
        reply_src: reply_src?,
    })
}

type TupleFields = (
    Option<IpAddr>,
    Option<IpAddr>,
    Option<u8>,
    Option<u16>,
    Option<u16>,
);

fn tuple_fields(tuple: &[Tuple]) -> TupleFields {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(fields) => {
                for f in fields {
                    match f {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (src, dst, proto, sport, dport)
}
