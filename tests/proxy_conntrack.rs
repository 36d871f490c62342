//! Tier 1: the netfilter netlink layer (`src/proxy/nfnetlink.rs`) against the kernel, in a
//! private network namespace per test (`unshare(CLONE_NEWNET)` on a thread of its own, so
//! the host's conntrack table and counters are never touched). Needs root, as CI has.
//!
//! - the conntrack entries of a UDP service are listed, and exactly the stale ones are
//!   deleted after an endpoint goes (kube-proxy's `CleanStaleEntries`,
//!   `pkg/proxy/conntrack/cleanup.go`, and its test `TestCleanStaleEntries`);
//! - the agent's index of the namespace's UDP entries, kept from conntrack events, lists
//!   what a dump lists (entries created before it listened, new ones, ones deleted by
//!   others) and is listed again by a dump after events were lost;
//! - kube-proxy's nfacct counters are created once and read.

use std::net::IpAddr;

use kemu::proxy::conntrack::table::{ConntrackTable, EVENT_BUFFER, Source};
use kemu::proxy::conntrack::{Flow, IPPROTO_UDP, stale_flows};
use kemu::proxy::nfnetlink::Nfnl;
use kemu::proxy::profile::ConntrackCleanup;
use kemu::proxy::{NodeContext, ProxyInput, objects};

/// Run `f` on a thread in a fresh network namespace.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): run as root");
        f()
    })
    .join()
    .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn input(endpoints: &[&str]) -> ProxyInput {
    let mut yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: ns}\n\
         spec: {clusterIP: 192.168.3.10, ports: [{name: dns, port: 53, protocol: UDP}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: dns-1, namespace: ns, labels: {kubernetes.io/service-name: dns}}\n\
         addressType: IPv4\nports: [{name: dns, port: 53, protocol: UDP}]\nendpoints:\n"
        .to_string();
    for ep in endpoints {
        yaml.push_str(&format!("- addresses: [{ep}]\n"));
    }
    let objs = objects::parse_yaml(&yaml).unwrap();
    ProxyInput::from_objects(
        NodeContext::new("node-1", vec![ip("192.168.0.201")]),
        &objs.services,
        &objs.endpoint_slices,
    )
}

fn flow(sport: u16, endpoint: &str) -> Flow {
    Flow {
        protocol: IPPROTO_UDP,
        orig_src: ip("172.16.2.5"),
        orig_dst: ip("192.168.3.10"),
        orig_sport: sport,
        orig_dport: 53,
        reply_src: ip(endpoint),
    }
}

#[test]
fn stale_udp_entries_are_listed_and_deleted() {
    let (left, deleted) = in_private_netns(|| {
        let mut nfnl = Nfnl::open().unwrap();
        // 200 flows to each of two endpoints (each from a source port of its own: an entry
        // is keyed by its original tuple); then 172.16.1.2 goes.
        let mut created = Vec::new();
        for (ep, ports) in [("172.16.1.2", 40000..40200), ("172.16.2.2", 41000..41200)] {
            for sport in ports {
                let f = flow(sport, ep);
                nfnl.create_flow(&f, 120).unwrap();
                created.push(f);
            }
        }
        let listed = nfnl.list_flows(false).unwrap();
        assert_eq!(
            listed.len(),
            created.len(),
            "{:?}",
            &listed[..3.min(listed.len())]
        );
        let (before, after) = (input(&["172.16.1.2", "172.16.2.2"]), input(&["172.16.2.2"]));
        let stale = stale_flows(
            ConntrackCleanup::Reconciler { fixed: false },
            &listed,
            &before,
            &after,
        );
        assert_eq!(stale.len(), 200);
        let deleted = nfnl.delete_flows(&stale).unwrap();
        (nfnl.list_flows(false).unwrap(), deleted)
    });
    assert_eq!(deleted, 200);
    assert_eq!(left.len(), 200);
    assert!(
        left.iter().all(|f| f.reply_src == ip("172.16.2.2")),
        "{left:?}"
    );
}

/// The UDP entries of the table, by a dump, in order.
fn dumped(nfnl: &mut Nfnl) -> Vec<Flow> {
    let mut flows: Vec<Flow> = nfnl
        .list_flows(false)
        .unwrap()
        .into_iter()
        .filter(|f| f.protocol == IPPROTO_UDP)
        .collect();
    flows.sort();
    flows
}

/// What the table lists (and from where), in order.
fn listed(table: &mut ConntrackTable, nfnl: &mut Nfnl) -> (Vec<Flow>, Source) {
    let (mut flows, source) = table.flows(nfnl, false).unwrap();
    flows.sort();
    (flows, source)
}

#[test]
fn the_event_index_lists_what_a_dump_lists() {
    in_private_netns(|| {
        let mut nfnl = Nfnl::open().unwrap();
        // Entries from before the agent listened come from its first listing, a dump.
        for sport in 30000..30050 {
            nfnl.create_flow(&flow(sport, "172.16.1.2"), 120).unwrap();
        }
        let mut table = ConntrackTable::open(EVENT_BUFFER);
        let (first, source) = listed(&mut table, &mut nfnl);
        assert_eq!(source, Source::Dump);
        assert_eq!(first, dumped(&mut nfnl));
        assert_eq!(first.len(), 50);

        // New entries (a TCP one too, never cleaned and not kept) come from events.
        for (ep, ports) in [("172.16.1.2", 40000..40200), ("172.16.2.2", 41000..41200)] {
            for sport in ports {
                nfnl.create_flow(&flow(sport, ep), 120).unwrap();
            }
        }
        let tcp = Flow {
            protocol: 6,
            ..flow(50000, "172.16.1.2")
        };
        nfnl.create_flow(&tcp, 120).unwrap();
        // Some go without the agent (as entries time out): a DESTROY event each, or none
        // for those older than the listener.
        let others: Vec<Flow> = (30000..30010)
            .chain(40000..40010)
            .map(|p| flow(p, "172.16.1.2"))
            .collect();
        assert_eq!(nfnl.delete_flows(&others).unwrap(), 20);
        let (flows, source) = listed(&mut table, &mut nfnl);
        assert_eq!(source, Source::Events);
        let table_now = dumped(&mut nfnl);
        assert_eq!(table_now.len(), 430);
        // Every entry of the table is in the index. Beyond them it may only hold deleted
        // entries older than the listener: with `nf_conntrack_events` at 2 (the default)
        // they carry no event extension, so no DESTROY event came for them.
        assert!(table_now.iter().all(|f| flows.contains(f)));
        let extra: Vec<Flow> = flows
            .iter()
            .filter(|f| !table_now.contains(f))
            .copied()
            .collect();
        assert!(extra.iter().all(|f| others[..10].contains(f)), "{extra:?}");

        // The cleanup deletes the same entries either way (the extra ones are found gone);
        // the index forgets them.
        let (before, after) = (input(&["172.16.1.2", "172.16.2.2"]), input(&["172.16.2.2"]));
        let mode = ConntrackCleanup::Reconciler { fixed: false };
        let from_index = stale_flows(mode, &flows, &before, &after);
        let from_dump = stale_flows(mode, &table_now, &before, &after);
        assert_eq!(from_index.len(), from_dump.len() + extra.len());
        assert_eq!(from_dump.len(), 230);
        assert_eq!(table.delete(&mut nfnl, &from_index).unwrap(), 230);
        let (flows, source) = listed(&mut table, &mut nfnl);
        assert_eq!(source, Source::Events);
        assert_eq!(flows, dumped(&mut nfnl));
        assert_eq!(flows.len(), 200);
        assert!(flows.iter().all(|f| f.reply_src == ip("172.16.2.2")));
    });
}

#[test]
fn lost_events_make_the_next_listing_a_dump() {
    in_private_netns(|| {
        let mut nfnl = Nfnl::open().unwrap();
        // A buffer far too small for the events of 500 entries (the kernel's minimum).
        let mut table = ConntrackTable::open(1);
        assert_eq!(listed(&mut table, &mut nfnl).1, Source::Dump);
        for sport in 40000..40500 {
            nfnl.create_flow(&flow(sport, "172.16.1.2"), 120).unwrap();
        }
        let (flows, source) = listed(&mut table, &mut nfnl);
        assert_eq!(source, Source::Dump, "events were lost");
        assert_eq!(flows, dumped(&mut nfnl));
        assert_eq!(flows.len(), 500);
        // And the index is right again after it.
        nfnl.create_flow(&flow(40500, "172.16.2.2"), 120).unwrap();
        let (flows, source) = listed(&mut table, &mut nfnl);
        assert_eq!(source, Source::Events);
        assert_eq!(flows, dumped(&mut nfnl));
    });
}

#[test]
fn nfacct_counters_are_created_once_and_read() {
    let (first, again) = in_private_netns(|| {
        let mut nfnl = Nfnl::open().unwrap();
        assert!(nfnl.counter("localhost_nps_accepted_pkts").is_err());
        nfnl.ensure_counter("localhost_nps_accepted_pkts").unwrap();
        let first = nfnl.counter("localhost_nps_accepted_pkts").unwrap();
        // Ensuring again neither fails nor resets it.
        nfnl.ensure_counter("localhost_nps_accepted_pkts").unwrap();
        (first, nfnl.counter("localhost_nps_accepted_pkts").unwrap())
    });
    assert_eq!(first, (0, 0));
    assert_eq!(again, (0, 0));
}
