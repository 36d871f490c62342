//! Faithfulness to kube-proxy: the Services and EndpointSlices of upstream tests
//! (`pkg/proxy/{iptables,nftables}/proxier_test.go`) are fed to our renderers and the output
//! must equal upstream's expected text once both are put in the order upstream's own tests
//! use (which only reorders services). Inputs and expectations live in
//! `tests/fixtures/proxy/upstream/`.
//!
//! Each render is also snapshotted (`snapshots/proxy_upstream__<UpstreamTestName>….snap`),
//! under the name of the upstream test it comes from, so that a change to the output is
//! reviewed as text even where upstream's comparison only reorders.
//!
//! One textual adaptation: upstream's fake proxier sets the masquerade mark to the literal
//! `0x4000`, while the real kube-proxy formats it with `%#08x` (`0x00004000`, which is what we
//! render); the expectations are rewritten to the real spelling before comparing.

use std::path::Path;

use kemu::proxy::normalize::{sort_iptables_by_service, sort_nft_transaction};
use kemu::proxy::{NodeContext, ProxyInput, ProxyMode, iptables, nftables, objects, render};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/proxy/upstream")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `NewFakeProxier` of the iptables tests.
fn iptables_node() -> NodeContext {
    let mut node = NodeContext::new("test-node", vec!["192.168.0.2".parse().unwrap()]);
    node.cluster_cidr = Some("10.0.0.0/8".parse().unwrap());
    node.localhost_node_ports = true;
    node.nfacct_invalid_drop = true;
    node.nfacct_localhost = true;
    node.random_fully = false;
    node
}

/// `NewFakeProxier` of the nftables tests.
fn nftables_node() -> NodeContext {
    let mut node = NodeContext::new("test-node", vec!["192.168.0.2".parse().unwrap()]);
    node.cluster_cidr = Some("10.0.0.0/8".parse().unwrap());
    node.node_port_addresses = vec![
        "192.168.0.2/32".parse().unwrap(),
        "2001:db8::1/128".parse().unwrap(),
    ];
    node.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    node
}

fn input(node: NodeContext, yaml: &str) -> ProxyInput {
    let objects = objects::parse_yaml(&fixture(yaml)).unwrap();
    ProxyInput::from_objects(node, &objects.services, &objects.endpoint_slices)
}

fn real_mark(expected: &str) -> String {
    expected.replace("0x4000", "0x00004000")
}

fn assert_iptables_like_upstream(upstream_test: &str, yaml: &str, expected: &str) {
    let rendered = iptables::render(&input(iptables_node(), yaml));
    let want = real_mark(&fixture(expected));
    similar_assert(&sort_iptables_by_service(&rendered), &want, &rendered);
    snapshot(upstream_test, &rendered);
}

/// The render, as a snapshot named after the upstream test it comes from.
fn snapshot(upstream_test: &str, rendered: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(format!("proxy_upstream__{upstream_test}"), rendered));
}

fn similar_assert(got: &str, want: &str, raw: &str) {
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines().chain(std::iter::repeat("<missing>")))
            .filter(|(w, g)| w != g)
            .take(5)
            .map(|(w, g)| format!("want: {w}\n got: {g}"))
            .collect();
        panic!(
            "output differs from upstream:\n{}\n\nfull output:\n{raw}",
            diff.join("\n")
        );
    }
}

#[test]
fn iptables_overall_rules_match_upstream() {
    assert_iptables_like_upstream(
        "TestOverallIPTablesRules",
        "overall.yaml",
        "overall.iptables.txt",
    );
}

#[test]
fn iptables_sync_rules_match_upstream() {
    assert_iptables_like_upstream(
        "TestSyncProxyRulesRepeated__iptables_initial",
        "repeated.yaml",
        "repeated.iptables.txt",
    );
}

#[test]
fn iptables_bad_ips_are_written_clean_like_upstream() {
    assert_iptables_like_upstream("TestBadIPs", "bad-ips.yaml", "bad-ips.iptables.txt");
}

#[test]
fn nftables_overall_rules_match_upstream() {
    let rendered = nftables::render_table(&input(nftables_node(), "overall.yaml"));
    let want = sort_nft_transaction(&real_mark(&fixture("overall.nft.txt")));
    similar_assert(&sort_nft_transaction(&rendered), &want, &rendered);
    snapshot("TestOverallNFTablesRules", &rendered);
}

#[test]
fn nftables_render_resets_the_table_first() {
    let text = render(ProxyMode::Nftables, &input(nftables_node(), "overall.yaml"));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("add table ip kube-proxy"));
    assert_eq!(lines.next(), Some("delete table ip kube-proxy"));
    assert_eq!(
        lines.next(),
        Some("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }")
    );
}

/// The chain `chain` of `table`, rules only, in order (upstream's `assertIPTablesChainEqual`).
fn chain_rules(text: &str, table: &str, chain: &str) -> String {
    let mut in_table = false;
    let prefix = format!("-A {chain} ");
    let mut out = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table && line.starts_with(&prefix) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn masquerade_rule_follows_random_fully() {
    // TestMasqueradeRule
    for random_fully in [false, true] {
        let mut node = iptables_node();
        node.random_fully = random_fully;
        let text = iptables::render(&ProxyInput::from_objects(node, &[], &[]));
        let suffix = if random_fully { " --random-fully" } else { "" };
        assert_eq!(
            chain_rules(&text, "nat", "KUBE-POSTROUTING"),
            real_mark(&format!(
                "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
                 -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
                 -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{suffix}\n"
            ))
        );
    }
}

#[test]
fn invalid_drop_rule_follows_conntrack_and_nfacct() {
    // TestDropInvalidRule
    let forward = real_mark(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    let cases = [
        (
            false,
            false,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        ),
        (
            true,
            false,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP\n",
        ),
        (false, true, ""),
    ];
    for (nfacct, liberal, drop) in cases {
        let mut node = iptables_node();
        node.nfacct_invalid_drop = nfacct;
        node.conntrack_tcp_be_liberal = liberal;
        let text = iptables::render(&ProxyInput::from_objects(node, &[], &[]));
        assert_eq!(
            chain_rules(&text, "filter", "KUBE-FORWARD"),
            format!("{drop}{forward}")
        );
    }
}

#[test]
fn kubelet_firewall_rule_only_with_ipv4_localhost_node_ports() {
    // TestNodePorts' KUBE-FIREWALL expectations.
    let firewall = "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n";
    let cases: [(&str, bool, Vec<&str>, bool); 5] = [
        ("192.168.0.2", true, vec![], true),
        ("192.168.0.2", false, vec![], false),
        (
            "192.168.0.2",
            false,
            vec!["192.168.0.0/24", "127.0.0.1/32"],
            false,
        ),
        (
            "192.168.0.2",
            true,
            vec!["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"],
            false,
        ),
        ("2001:db8::1", true, vec![], false),
    ];
    for (ip, localhost, addresses, expect) in cases {
        let mut node = iptables_node();
        node.node_ips = vec![ip.parse().unwrap()];
        node.localhost_node_ports = localhost;
        node.node_port_addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
        let text = iptables::render(&ProxyInput::from_objects(node, &[], &[]));
        let want = if expect { firewall } else { "" };
        assert_eq!(
            chain_rules(&text, "filter", "KUBE-FIREWALL"),
            want,
            "{ip} {localhost} {addresses:?}"
        );
        // The tail rule restricts NodePorts the same way.
        let tail = chain_rules(&text, "nat", "KUBE-SERVICES");
        match (ip.contains(':'), addresses.is_empty(), localhost) {
            (true, true, _) => assert!(
                tail.contains("-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"),
                "{tail}"
            ),
            (false, true, true) => assert!(
                tail.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"),
                "{tail}"
            ),
            (false, true, false) => assert!(
                tail.contains("--dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"),
                "{tail}"
            ),
            _ => assert!(
                tail.contains("-d 192.168.0.2 -j KUBE-NODEPORTS") && !tail.contains("127.0.0.1"),
                "{tail}"
            ),
        }
    }
}

fn endpoints_yaml(name: &str, prefix: &str, count: usize, port: u16) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{name}, namespace: ns{name}}}\n\
         spec: {{clusterIP: 172.30.0.4{name}, ports: [{{name: p{port}, port: {port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: svc{name}-1, namespace: ns{name}, labels: {{kubernetes.io/service-name: svc{name}}}}}\n\
         addressType: IPv4\nports: [{{name: p{port}, port: {port}}}]\nendpoints:\n"
    );
    for i in 0..count {
        yaml.push_str(&format!(
            "- addresses: [{prefix}.{}.{}]\n",
            i % 256,
            i / 256
        ));
    }
    yaml
}

#[test]
fn large_clusters_drop_endpoint_comments() {
    // TestSyncProxyRulesLargeClusterMode: 998 endpoints keep comments, 1001 do not.
    let render_yaml = |yaml: String| {
        let objects = objects::parse_yaml(&yaml).unwrap();
        let mut node = iptables_node();
        node.masquerade_all = true;
        iptables::render(&ProxyInput::from_objects(
            node,
            &objects.services,
            &objects.endpoint_slices,
        ))
    };
    let small = format!(
        "{}---\n{}",
        endpoints_yaml("1", "10.0", 499, 80),
        endpoints_yaml("2", "10.1", 499, 8080)
    );
    let text = render_yaml(small.clone());
    assert!(text.lines().any(|l| l
        == "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80"));
    let dnat_lines = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains("-j DNAT"))
        .count();
    assert_eq!(dnat_lines, 998);

    let large = format!(
        "{small}---\n{}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: svc3, namespace: ns3}\n\
         spec: {clusterIP: 172.30.0.43, ports: [{name: p8081, port: 8081}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: svc3-1, namespace: ns3, labels: {kubernetes.io/service-name: svc3}}\n\
         addressType: IPv4\nports: [{name: p8081, port: 8081}]\n\
         endpoints: [{addresses: [203.0.113.4]}, {addresses: [203.0.113.8]}, {addresses: [203.0.113.12]}]\n"
    );
    let text = render_yaml(large);
    assert!(
        text.lines().any(|l| l
            == "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80")
    );
    assert!(text.lines().any(|l| l
        == "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081"));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("-A KUBE-SEP-") && l.contains("--comment"))
    );
}

#[test]
fn stale_service_chains_are_flushed_and_deleted() {
    // Like TestSyncProxyRulesRepeated after deleting svc2, but as a full sync.
    let mut only_svc1 = input(iptables_node(), "repeated.yaml");
    only_svc1.services.retain(|s| s.name.name == "svc1");
    only_svc1.existing_nat_chains = [
        "KUBE-SERVICES",
        "KUBE-SVC-XPGD46QRK7WJZT7O",
        "KUBE-SEP-SNQ3ZNILQDEJNDQO",
        "KUBE-SEP-UHEGFW77JX3KXTOV",
        "KUBE-SVC-2VJB64SDSIJUP5T6",
        "DOCKER",
    ]
    .map(String::from)
    .to_vec();
    let text = iptables::render(&only_svc1);
    let nat: Vec<&str> = text.split("*nat\n").nth(1).unwrap().lines().collect();
    for chain in ["KUBE-SEP-UHEGFW77JX3KXTOV", "KUBE-SVC-2VJB64SDSIJUP5T6"] {
        assert!(nat.contains(&format!(":{chain} - [0:0]").as_str()));
        assert!(nat.contains(&format!("-X {chain}").as_str()));
    }
    assert!(!text.contains("-X KUBE-SVC-XPGD46QRK7WJZT7O"));
    assert!(!text.contains("DOCKER"));
}

/// The inputs of one step of an upstream test whose states live in
/// `tests/fixtures/proxy/upstream/<dir>/<step>.yaml`.
fn step_input(dir: &str, step: &str) -> ProxyInput {
    input(iptables_node(), &format!("{dir}/{step}.yaml"))
}

/// kube-proxy's `TestSyncProxyRulesRepeated` (`pkg/proxy/iptables/proxier_test.go`): a full
/// sync, then partial syncs that write only the changed services' chains (with every
/// `KUBE-SERVICES` jump), flush and delete the chains of deleted services and endpoints, and
/// a full resync. Each step's restore input must equal upstream's expected one.
#[test]
fn iptables_sync_proxy_rules_repeated() {
    use kemu::proxy::agent::rules::{chains_after_partial, chains_after_restore};
    const DIR: &str = "repeated";
    let steps = [
        "0-initial",
        "1-add-svc3",
        "2-delete-svc2",
        "3-add-svc4-without-endpoints",
        "4-add-svc4-endpoints",
        "5-change-svc3-endpoint",
        "6-add-svc3-endpoint",
        "7-no-change",
        "8-delete-svc4-full-resync",
    ];
    let mut previous = step_input(DIR, steps[0]);
    let first = iptables::render(&previous);
    similar_assert(
        &sort_iptables_by_service(&first),
        &real_mark(&fixture(&format!("{DIR}/{}.iptables.txt", steps[0]))),
        &first,
    );
    // The nat chains in the kernel, as kube-proxy's iptables-save would list them.
    let mut chains = chains_after_restore(&first, "nat");
    for step in &steps[1..] {
        let mut next = step_input(DIR, step);
        next.existing_nat_chains = chains.clone();
        let full = step.contains("full-resync");
        if !full {
            next.changed_services = Some(ProxyInput::changed_services(&previous, &next));
        }
        let text = iptables::render(&next);
        let want = real_mark(&fixture(&format!("{DIR}/{step}.iptables.txt")));
        let got = sort_iptables_by_service(&text);
        assert!(
            got == want,
            "step {step} differs from upstream:\n--- want\n{want}\n--- got\n{got}"
        );
        chains = if full {
            chains_after_restore(&text, "nat")
        } else {
            chains_after_partial(&chains, &text, "nat")
        };
        next.existing_nat_chains = Vec::new();
        next.changed_services = None;
        previous = next;
    }
}
