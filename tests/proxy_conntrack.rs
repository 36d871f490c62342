//! Tier 1: the netfilter netlink layer (`src/proxy/nfnetlink.rs`) against the kernel, in a
//! private network namespace per test (`unshare(CLONE_NEWNET)` on a thread of its own, so
//! the host's conntrack table and counters are never touched). Needs root, as CI has.
//!
//! - the conntrack entries of a UDP service are listed, and exactly the stale ones are
//!   deleted after an endpoint goes (kube-proxy's `CleanStaleEntries`,
//!   `pkg/proxy/conntrack/cleanup.go`, and its test `TestCleanStaleEntries`);
//! - kube-proxy's nfacct counters are created once and read.

use std::net::IpAddr;

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
