//! A pod's `/etc/resolv.conf`, as the kubelet forms it (`pkg/kubelet/network/dns/dns.go`,
//! `GetPodDNS`): by `dnsPolicy`, merged with `dnsConfig`, held to the resolver's limits.
//!
//! - `ClusterFirst` (the default): the cluster DNS, search `<ns>.svc.<domain> svc.<domain>
//!   <domain>` then the node's search list, `options ndots:5`. On a hostNetwork pod it acts
//!   as `Default`; without a cluster DNS it falls back to `Default` with a `MissingClusterDNS`
//!   event.
//! - `ClusterFirstWithHostNet`: the cluster DNS even with hostNetwork.
//! - `Default`: the node's resolv.conf (`--resolv-conf`; none: `nameserver 127.0.0.1`, search `.`).
//! - `None`: `dnsConfig` only.
//!
//! `dnsConfig` appends nameservers and searches (without duplicates) and merges options (the
//! pod's win). Limits: 3 nameservers, 32 search domains and 2048 characters; going over trims
//! the list and gives a `DNSConfigForming` event.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The kubelet's DNS settings (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    pub cluster_dns: Option<Ipv4Addr>,
    pub cluster_domain: String,
    /// The node's resolv.conf; `None`: the kubelet ran with `--resolv-conf=""`.
    pub node: Option<ResolvConf>,
}

/// The three things a resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(String::from)),
                // The last search line wins, as in glibc.
                Some("search") => conf.searches = words.map(String::from).collect(),
                Some("options") => conf.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        conf
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// An event the kubelet records while forming the file: (reason, message).
pub type DnsEvent = (&'static str, String);

/// The resolv.conf of `pod` on a node with `settings`, and the warnings to record.
pub fn pod_resolv_conf(pod: &Pod, settings: &DnsSettings) -> (ResolvConf, Vec<DnsEvent>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let mut events = Vec::new();
    let node = || {
        settings.node.clone().unwrap_or_else(|| ResolvConf {
            nameservers: vec!["127.0.0.1".into()],
            searches: vec![".".into()],
            options: Vec::new(),
        })
    };
    let wants_cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = match policy {
        "None" => ResolvConf::default(),
        _ if wants_cluster => match settings.cluster_dns {
            Some(ip) => {
                let d = &settings.cluster_domain;
                let mut searches = vec![
                    format!("{namespace}.svc.{d}"),
                    format!("svc.{d}"),
                    d.clone(),
                ];
                searches.extend(node().searches.into_iter().filter(|s| s != "."));
                ResolvConf {
                    nameservers: vec![ip.to_string()],
                    searches: dedup(searches),
                    options: vec!["ndots:5".into()],
                }
            }
            None => {
                events.push((
                    "MissingClusterDNS",
                    format!("pod: {:?}. kubelet does not have ClusterDNS IP configured and cannot create Pod using {policy:?} policy. Falling back to \"Default\" policy.", pod_label(pod)),
                ));
                node()
            }
        },
        _ => node(),
    };
    if let Some(extra) = &spec.dns_config {
        conf.nameservers = dedup(
            conf.nameservers
                .into_iter()
                .chain(extra.nameservers.iter().flatten().cloned())
                .collect(),
        );
        conf.searches = dedup(
            conf.searches
                .into_iter()
                .chain(extra.searches.iter().flatten().cloned())
                .collect(),
        );
        for option in extra.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            conf.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            conf.options.push(match &option.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        events.push((
            "DNSConfigForming",
            format!("Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}", conf.nameservers.join(" ")),
        ));
    }
    let searches_before = conf.searches.len();
    conf.searches.retain(|s| s.len() <= 253);
    while conf.searches.len() > MAX_SEARCHES || conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
    }
    if conf.searches.len() != searches_before {
        events.push((
            "DNSConfigForming",
            format!("Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}", conf.searches.join(" ")),
        ));
    }
    (conf, events)
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop", "uid": "u1"},
            "spec": spec}),
        )
        .unwrap()
    }

    fn with_dns(node: Option<&str>) -> DnsSettings {
        DnsSettings {
            cluster_dns: Some("10.96.0.10".parse().unwrap()),
            cluster_domain: "cluster.local".into(),
            node: node.map(ResolvConf::parse),
        }
    }

    fn render(p: &Pod, s: &DnsSettings) -> String {
        let (conf, events) = pod_resolv_conf(p, s);
        let mut out = conf.render();
        for (reason, message) in events {
            out.push_str(&format!("event {reason}: {message}\n"));
        }
        out
    }

    #[test]
    fn each_policy_gives_the_kubelets_file() {
        let node = Some("search lab.example\nnameserver 192.168.0.100\n");
        let cases = [
            (
                "ClusterFirst",
                pod(json!({"containers": []})),
                with_dns(node),
            ),
            (
                "ClusterFirst, host network",
                pod(json!({"hostNetwork": true, "containers": []})),
                with_dns(node),
            ),
            (
                "ClusterFirstWithHostNet",
                pod(
                    json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}),
                ),
                with_dns(node),
            ),
            (
                "Default",
                pod(json!({"dnsPolicy": "Default", "containers": []})),
                with_dns(node),
            ),
            (
                "Default, --resolv-conf=\"\"",
                pod(json!({"dnsPolicy": "Default", "containers": []})),
                with_dns(None),
            ),
            (
                "ClusterFirst without cluster DNS",
                pod(json!({"containers": []})),
                DnsSettings {
                    cluster_dns: None,
                    ..with_dns(None)
                },
            ),
            (
                "None with dnsConfig",
                pod(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
                with_dns(node),
            ),
            (
                "ClusterFirst with dnsConfig",
                pod(json!({"containers": [], "dnsConfig": {
                "nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "searches": ["svc.cluster.local", "x.example"],
                "options": [{"name": "ndots", "value": "1"}]}})),
                with_dns(node),
            ),
        ];
        let text: String = cases
            .iter()
            .map(|(name, p, s)| format!("## {name}\n{}", render(p, s)))
            .collect();
        insta::assert_snapshot!(text);
    }

    #[test]
    fn long_search_lists_are_trimmed() {
        let searches: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let p = pod(
            json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {"searches": searches}}),
        );
        let (conf, events) = pod_resolv_conf(&p, &with_dns(None));
        assert_eq!(conf.searches.len(), MAX_SEARCHES);
        assert_eq!(events[0].0, "DNSConfigForming");
    }
}
