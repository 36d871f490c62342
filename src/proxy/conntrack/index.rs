//! The agent's own copy of its namespace's UDP conntrack entries, kept from the kernel's
//! conntrack events, so that a cleanup needs no dump of the table.
//!
//! A dump costs the same whatever the namespace's table holds: the kernel walks its whole
//! conntrack hash (262,144 buckets on the benchmark machine), which every namespace shares,
//! taking a lock per bucket (BENCHMARKS.md, "Conntrack cleanup"). The events of one
//! namespace come only to that namespace's listeners, one per new and per destroyed entry.
//!
//! The index is correct when it holds every entry of the table; it may hold a few more
//! (harmless: deleting an entry that is gone answers ENOENT, and the entry is forgotten):
//!
//! - entries that existed before the listener subscribed carry no event extension, so the
//!   kernel reports no DESTROY for them (they came from the dump that primes the index);
//! - a NEW event can reach the listener after the DESTROY of the same entry when another CPU
//!   deletes it in between.
//!
//! It misses entries only when events were lost, which the kernel reports (ENOBUFS): then the
//! owner lists the table again ([`FlowIndex::replace`]).

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Flow, IPPROTO_UDP};

/// What the kernel keys an entry by (in the default zone): its original tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
}

impl From<&Flow> for FlowKey {
    fn from(f: &Flow) -> FlowKey {
        FlowKey {
            protocol: f.protocol,
            orig_src: f.orig_src,
            orig_dst: f.orig_dst,
            orig_sport: f.orig_sport,
            orig_dport: f.orig_dport,
        }
    }
}

/// A conntrack event of the namespace (`NFNLGRP_CONNTRACK_NEW` / `_DESTROY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    New(Flow),
    Destroy(Flow),
}

/// Whether the cleanup can ever select an entry of `protocol` (every filter and the
/// reconciler look at UDP only): the index keeps only those.
pub fn indexed(protocol: u8) -> bool {
    protocol == IPPROTO_UDP
}

/// The namespace's UDP entries by original tuple.
#[derive(Debug, Default)]
pub struct FlowIndex {
    flows: HashMap<FlowKey, Flow>,
}

impl FlowIndex {
    /// Start again from a dump of the table.
    pub fn replace(&mut self, table: &[Flow]) {
        self.flows = table
            .iter()
            .filter(|f| indexed(f.protocol))
            .map(|f| (FlowKey::from(f), *f))
            .collect();
    }

    /// Apply one event, in the order the kernel queued them. A NEW replaces an entry of the
    /// same tuple (its DESTROY was queued first, or the old one predates the listener).
    pub fn apply(&mut self, event: FlowEvent) {
        match event {
            FlowEvent::New(f) if indexed(f.protocol) => {
                self.flows.insert(FlowKey::from(&f), f);
            }
            FlowEvent::Destroy(f) => self.forget(&f),
            FlowEvent::New(_) => {}
        }
    }

    /// Drop an entry (deleted, or found gone).
    pub fn forget(&mut self, flow: &Flow) {
        self.flows.remove(&FlowKey::from(flow));
    }

    /// The entries of one address family, as a dump of that family's table lists them.
    pub fn flows(&self, ipv6: bool) -> Vec<Flow> {
        self.flows
            .values()
            .filter(|f| f.orig_src.is_ipv6() == ipv6)
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, sport: u16, reply_src: &str) -> Flow {
        Flow {
            protocol: IPPROTO_UDP,
            orig_src: src.parse().unwrap(),
            orig_dst: if src.contains(':') {
                "fd00::10".parse().unwrap()
            } else {
                "192.168.3.10".parse().unwrap()
            },
            orig_sport: sport,
            orig_dport: 53,
            reply_src: reply_src.parse().unwrap(),
        }
    }

    fn sorted(mut flows: Vec<Flow>) -> Vec<Flow> {
        flows.sort();
        flows
    }

    #[test]
    fn events_keep_the_udp_entries_of_the_table() {
        let mut index = FlowIndex::default();
        let a = flow("172.16.2.5", 40000, "172.16.1.2");
        let b = flow("172.16.2.5", 40001, "172.16.1.2");
        let tcp = Flow { protocol: 6, ..a };
        index.replace(&[a, tcp]);
        assert_eq!(
            index.flows(false),
            vec![a],
            "TCP is never cleaned: not kept"
        );
        index.apply(FlowEvent::New(b));
        index.apply(FlowEvent::New(Flow { protocol: 6, ..b }));
        assert_eq!(sorted(index.flows(false)), vec![a, b]);
        index.apply(FlowEvent::Destroy(a));
        assert_eq!(index.flows(false), vec![b]);
        // The same tuple again, now DNATed elsewhere: the newer entry wins.
        let b2 = Flow {
            reply_src: "172.16.2.2".parse().unwrap(),
            ..b
        };
        index.apply(FlowEvent::Destroy(b));
        index.apply(FlowEvent::New(b2));
        assert_eq!(index.flows(false), vec![b2]);
        // A NEW whose DESTROY of an older entry of that tuple was never seen (it predates
        // the listener) replaces it too.
        index.apply(FlowEvent::New(b));
        assert_eq!(index.flows(false), vec![b]);
        index.forget(&b);
        assert!(index.is_empty());
    }

    #[test]
    fn flows_are_listed_per_address_family() {
        let mut index = FlowIndex::default();
        let v4 = flow("172.16.2.5", 40000, "172.16.1.2");
        let v6 = flow("fd00::5", 40000, "fd00::1:2");
        index.replace(&[v4, v6]);
        assert_eq!(index.flows(false), vec![v4]);
        assert_eq!(index.flows(true), vec![v6]);
        assert_eq!(index.len(), 2);
        // A dump replaces everything the events said.
        index.replace(&[v6]);
        assert_eq!(index.flows(false), vec![]);
    }
}
