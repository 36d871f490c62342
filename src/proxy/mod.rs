//! The service proxy's pure core: Services and EndpointSlices in, the node's complete rule set
//! out, as text that `iptables-restore` / `nft -f` accepts, exactly as kube-proxy writes it.
//!
//! ```text
//! Service + EndpointSlice objects ──model──▶ ProxyInput ──render(mode)──▶ restore / nft text
//!                                                        └─jump_rules(mode)─▶ built-in-chain hooks
//! ```
//!
//! Three modes, selected by [`ProxyMode`]:
//! - [`userspace`]: the 2015 proxier (four `KUBE-PORTALS-*` / `KUBE-NODEPORT-*` nat chains that
//!   redirect to a local proxy port, plus the round-robin [`roundrobin::LoadBalancerRR`]);
//! - [`iptables`]: modern kube-proxy `iptables` mode (`KUBE-SERVICES`, `KUBE-SVC-*`, …);
//! - [`nftables`]: modern kube-proxy `nftables` mode (table `kube-proxy`).
//!
//! The one intended difference from kube-proxy: it walks services (and a few merged endpoint
//! sets) in Go map order, which is random; we walk them in sorted order so output is stable.
//! [`normalize`] holds the normalisers that make live rules and upstream expectations comparable.
//!
//! The live side: [`agent`] is the per-node agent (`kemu proxy`) that watches the API and
//! applies these renders; [`forwarder`] is the userspace mode's socket forwarder.

pub mod agent;
pub mod conntrack;
pub mod forwarder;
pub mod hash;
pub mod iptables;
pub mod model;
pub mod nfnetlink;
pub mod nftables;
pub mod normalize;
pub mod objects;
pub mod profile;
pub mod rng;
pub mod roundrobin;
pub mod userspace;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::{Deserialize, Serialize};

pub use model::{Endpoint, EndpointsMap, NodeContext, ServicePort, ServicePortName};

/// Which proxier's rules to render.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// 2015 userspace proxier: portal chains redirecting to local proxy ports.
    Userspace,
    /// Modern kube-proxy iptables mode.
    Iptables,
    /// Modern kube-proxy nftables mode.
    Nftables,
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Userspace => "userspace",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// Everything a full sync needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyInput {
    pub node: NodeContext,
    /// Proxied service ports, sorted by name (the stable stand-in for Go map order).
    pub services: Vec<ServicePort>,
    /// Endpoints per service port, each list sorted by `ip:port`.
    pub endpoints: EndpointsMap,
    /// Userspace mode only: the local proxy port of each service port. A service port without
    /// one gets no rules, as when the 2015 proxier failed to allocate a port for it.
    pub proxy_ports: BTreeMap<ServicePortName, u16>,
    /// iptables mode only: nat chains seen in the live table (from `iptables-save -t nat`).
    /// Service chains among them that this render no longer produces are flushed and deleted
    /// (`-X`), as kube-proxy does with its own save. Empty on a first sync.
    pub existing_nat_chains: Vec<String>,
    /// iptables mode only: a kube-proxy partial sync, which writes the per-service chains
    /// of these services (`namespace/name`) only; `None` for a full sync.
    pub changed_services: Option<BTreeSet<String>>,
}

impl ProxyInput {
    /// Build the input from API objects. Headless and ExternalName services are dropped,
    /// addresses of the other IP family are ignored, and the result is sorted.
    pub fn from_objects<'a>(
        node: NodeContext,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ProxyInput {
        let family = node.family();
        let mut ports: Vec<ServicePort> = services
            .into_iter()
            .flat_map(|svc| model::service_ports(svc, family))
            .collect();
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        ports.dedup_by(|a, b| a.name == b.name);
        let endpoints = model::endpoints_map(slices, &node.node_name, family);
        ProxyInput {
            node,
            services: ports,
            endpoints,
            proxy_ports: BTreeMap::new(),
            existing_nat_chains: Vec::new(),
            changed_services: None,
        }
    }

    /// The services (`namespace/name`) whose ports or endpoints differ between two inputs:
    /// kube-proxy's `UpdatedServices` of its service and endpoint change trackers, the
    /// services a partial sync rewrites.
    pub fn changed_services(previous: &ProxyInput, next: &ProxyInput) -> BTreeSet<String> {
        /// A service's ports, and its ports' endpoints.
        type ServiceState<'a> = (
            Vec<&'a ServicePort>,
            Vec<(&'a ServicePortName, &'a Vec<Endpoint>)>,
        );
        fn by_service(input: &ProxyInput) -> BTreeMap<String, ServiceState<'_>> {
            let mut map: BTreeMap<String, ServiceState<'_>> = BTreeMap::new();
            for svc in &input.services {
                map.entry(svc.name.service_key()).or_default().0.push(svc);
            }
            let mut eps: Vec<_> = input.endpoints.iter().collect();
            eps.sort_by(|a, b| a.0.cmp(b.0));
            for (name, list) in eps {
                map.entry(name.service_key())
                    .or_default()
                    .1
                    .push((name, list));
            }
            map
        }
        let (old, new) = (by_service(previous), by_service(next));
        old.keys()
            .chain(new.keys())
            .filter(|k| old.get(*k) != new.get(*k))
            .cloned()
            .collect()
    }

    /// The (sorted) endpoints of a service port; empty if it has none.
    pub fn endpoints_of(&self, name: &ServicePortName) -> &[Endpoint] {
        self.endpoints.get(name).map_or(&[], Vec::as_slice)
    }
}

/// Render the complete rule set of `mode` for `input`: the text to feed to
/// `iptables-restore` ([`RESTORE_ARGS`]) for `userspace`/`iptables`, or to `nft -f -` for
/// `nftables`.
pub fn render(mode: ProxyMode, input: &ProxyInput) -> String {
    match mode {
        ProxyMode::Userspace => userspace::render(input),
        ProxyMode::Iptables => iptables::render(input),
        ProxyMode::Nftables => nftables::render(input),
    }
}

/// Arguments for `iptables-restore` (both iptables-based modes): keep other chains and tables
/// (`--noflush`), as kube-proxy does; only the chains declared in the input are replaced.
pub const RESTORE_ARGS: &[&str] = &["--noflush", "--counters"];

/// Where a jump rule goes in its built-in chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Inserted at position 1 if missing (`iptables -I CHAIN 1`).
    Prepend,
    /// Appended if missing (`iptables -A CHAIN`).
    Append,
}

/// A rule in a built-in chain that hooks the proxy's own chains. The restore text never
/// carries these (it must not rewrite chains that others own); the agent ensures each one
/// with `iptables -C` then `-I`/`-A`, and deletes them (`-D`) on exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JumpRule {
    pub table: &'static str,
    /// The built-in chain, e.g. `PREROUTING`.
    pub chain: &'static str,
    pub position: Position,
    /// Match arguments and target, in the order kube-proxy passes them (`-C`/`-I`/`-A`/`-D`).
    pub args: Vec<String>,
}

impl JumpRule {
    /// The rule as `iptables-save` prints it (`-A CHAIN …`, comments quoted when needed).
    pub fn save_line(&self) -> String {
        let mut line = format!("-A {}", self.chain);
        let mut args = self.args.iter().peekable();
        while let Some(arg) = args.next() {
            line.push(' ');
            line.push_str(arg);
            if arg == "--comment"
                && let Some(value) = args.next()
            {
                line.push(' ');
                line.push_str(&normalize::save_quote(value));
            }
        }
        line
    }
}

/// The jump rules of `mode`, in the order the proxier ensures them. nftables mode has none
/// (its base chains hook netfilter directly).
pub fn jump_rules(mode: ProxyMode) -> Vec<JumpRule> {
    match mode {
        ProxyMode::Userspace => userspace::jump_rules(),
        ProxyMode::Iptables => iptables::jump_rules(),
        ProxyMode::Nftables => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_use_lowercase_names() {
        for mode in [
            ProxyMode::Userspace,
            ProxyMode::Iptables,
            ProxyMode::Nftables,
        ] {
            assert_eq!(
                serde_json::to_string(&mode).unwrap(),
                format!("\"{}\"", mode.as_str())
            );
            assert_eq!(
                serde_json::from_str::<ProxyMode>(&format!("\"{}\"", mode.as_str())).unwrap(),
                mode
            );
        }
        assert!(jump_rules(ProxyMode::Nftables).is_empty());
    }
}
