//! `kemu flanneld`: the per-host overlay agent, flannel with its Kubernetes subnet manager.
//!
//! It runs inside a minion's namespace and:
//! 1. waits for its Node and takes `spec.podCIDR` as its lease (the kubelet registers the Node
//!    with the subnet the topology leased to the host, as kube-controller-manager's node IPAM
//!    would);
//! 2. creates `flannel.1`, reusing the VTEP MAC recorded in its Node's annotations, so a restart
//!    keeps the lease and the MAC every peer already knows;
//! 3. writes `subnet.env` and annotates its Node like flannel (backend type, backend data,
//!    public IP);
//! 4. installs flannel's `--ip-masq` rules;
//! 5. watches every Node and keeps one set of overlay entries per peer lease, adding, removing
//!    and replacing them as hosts join, leave or change, and re-applying them periodically so
//!    that entries deleted by hand come back (flannel re-checks its routes the same way).

pub mod lease;
pub mod masq;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde::Deserialize;

use crate::netlink::{NetOp, Netlink};
use crate::overlay::{self, Lease, OverlayBackend, VXLAN_DEVICE};
use crate::topology::Backend;

/// How often every peer's entries are re-applied.
const RESYNC: Duration = Duration::from_secs(10);

/// flannel's net-conf.json.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "Network")]
    pub network: Ipv4Net,
    #[serde(rename = "Backend")]
    pub backend: NetConfBackend,
}

/// `Backend` of net-conf.json.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConfBackend {
    #[serde(rename = "Type")]
    pub kind: String,
}

impl NetConf {
    /// net-conf.json for a topology.
    pub fn render(network: Ipv4Net, backend: Backend) -> String {
        format!("{{\"Network\": \"{network}\", \"Backend\": {{\"Type\": \"{backend}\"}}}}\n")
    }

    fn backend(&self) -> anyhow::Result<Backend> {
        match self.backend.kind.as_str() {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            other => anyhow::bail!("backend type {other:?} is not supported: use vxlan or host-gw"),
        }
    }
}

/// Everything flanneld needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_server: String,
    pub node_name: String,
    pub public_ip: Ipv4Addr,
    pub net_conf: PathBuf,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    /// The underlay MTU.
    pub mtu: u32,
    /// Lab name, for the VTEP MAC of a first start.
    pub lab: String,
}

/// Run until SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&cfg.net_conf)
        .with_context(|| format!("read net-conf {}", cfg.net_conf.display()))?;
    let net_conf: NetConf = serde_json::from_str(&text).context("parse net-conf.json")?;
    let backend_kind = net_conf.backend()?;
    let backend = overlay::backend(backend_kind);
    let client = crate::client::connect(&cfg.api_server)?;
    let nodes: Api<Node> = Api::all(client);
    let nl = Netlink::from_socket(&cfg.node_name, crate::netlink::open_socket()?)?;

    // 1. Our lease: the Node's podCIDR.
    let node = wait_for_lease(&nodes, &cfg.node_name).await?;
    let subnet: Ipv4Net = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .context("node has no podCIDR")?
        .parse()
        .context("node podCIDR is not an IPv4 CIDR")?;
    anyhow::ensure!(
        net_conf.network.contains(&subnet.network()),
        "lease {subnet} of node {} is outside the network {}",
        cfg.node_name,
        net_conf.network
    );

    // 2. The device, keeping the MAC peers know.
    let vtep_mac = match backend_kind {
        Backend::Vxlan => Some(
            lease::recorded_vtep_mac(&node)
                .or(nl.mac(VXLAN_DEVICE).await?)
                .unwrap_or_else(|| overlay::vtep_mac(&cfg.lab, &cfg.node_name)),
        ),
        Backend::HostGw => None,
    };
    let local = Lease {
        host: cfg.node_name.clone(),
        subnet,
        public_ip: cfg.public_ip,
        vtep_mac,
    };
    ensure_device(&nl, backend, &local, cfg.mtu).await?;

    // 3. subnet.env and the Node's annotations.
    let env = overlay::subnet_env(net_conf.network, subnet, backend.mtu(cfg.mtu), cfg.ip_masq);
    let dir = crate::fsguard::parent_of(&cfg.subnet_file)?;
    dir.create_dir_all(dir.root())?;
    dir.write_atomic(&cfg.subnet_file, env.as_bytes())
        .with_context(|| format!("write {}", cfg.subnet_file.display()))?;
    let patch = serde_json::json!({"metadata": {"annotations": lease::annotations(backend.name(), cfg.public_ip, vtep_mac)}});
    nodes
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("annotate node {}", cfg.node_name))?;
    tracing::info!(%subnet, backend = backend.name(), "lease acquired");

    // 4. Masquerading.
    if cfg.ip_masq {
        install_masq(net_conf.network, subnet)?;
    }

    // 5. Peers.
    let mut view = NodeView::default();
    let mut programmed: Vec<Lease> = Vec::new();
    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut resync = tokio::time::interval(RESYNC);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = resync.tick() => {
                if view.initialised {
                    ensure_device(&nl, backend, &local, cfg.mtu).await?;
                    for lease in &programmed {
                        apply_peer(&nl, backend, lease).await;
                    }
                }
            }
            event = events.next() => {
                let Some(event) = event else { anyhow::bail!("node watch ended") };
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!("node watch: {e}");
                        continue;
                    }
                };
                let Some(all) = view.apply(event) else {
                    continue;
                };
                let wanted = lease::peers(&all, &cfg.node_name, backend.name());
                let change = lease::diff(&programmed, &wanted);
                for gone in &change.removed {
                    tracing::info!(peer = %gone.host, subnet = %gone.subnet, "removing peer");
                    for op in backend.peer(gone).iter().rev() {
                        if let Err(e) = nl.revert(op).await {
                            tracing::warn!("{e}");
                        }
                    }
                }
                for new in &change.added {
                    tracing::info!(peer = %new.host, subnet = %new.subnet, "adding peer");
                    apply_peer(&nl, backend, new).await;
                }
                programmed = wanted;
            }
        }
    }
}

/// The Nodes as the watch shows them. A relist (after any watch error, e.g. an API server
/// restart) is collected aside and swapped in whole at its end: diffing against a half-listed
/// set would remove every peer not listed yet and add it back a moment later, a black hole on
/// every relist.
#[derive(Debug, Default)]
struct NodeView {
    known: BTreeMap<String, Node>,
    relisting: Option<BTreeMap<String, Node>>,
    initialised: bool,
}

impl NodeView {
    /// Take one watch event; the whole set of Nodes when the peers must be recomputed.
    fn apply(&mut self, event: watcher::Event<Node>) -> Option<Vec<Node>> {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                return None;
            }
            watcher::Event::InitApply(n) => {
                if let Some(fresh) = self.relisting.as_mut() {
                    fresh.insert(name(&n), n);
                }
                return None;
            }
            watcher::Event::InitDone => {
                self.known = self.relisting.take().unwrap_or_default();
                self.initialised = true;
            }
            watcher::Event::Apply(n) => {
                self.known.insert(name(&n), n);
            }
            watcher::Event::Delete(n) => {
                self.known.remove(&name(&n));
            }
        }
        self.initialised
            .then(|| self.known.values().cloned().collect())
    }
}

/// Wait until the kubelet has registered our Node with a podCIDR.
async fn wait_for_lease(nodes: &Api<Node>, name: &str) -> anyhow::Result<Node> {
    let mut delay = Duration::from_millis(50);
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node))
                if node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.as_ref())
                    .is_some() =>
            {
                return Ok(node);
            }
            Ok(_) => tracing::info!(node = name, "waiting for the node and its podCIDR"),
            Err(e) => tracing::info!(node = name, "waiting for the API server: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Create the backend's device, or keep a compatible one (same MAC) as flannel's `ensureLink`.
async fn ensure_device(
    nl: &Netlink,
    backend: &dyn OverlayBackend,
    local: &Lease,
    mtu: u32,
) -> anyhow::Result<()> {
    for op in backend.device(local, mtu) {
        if let NetOp::Vxlan { name, mac, .. } = &op {
            match nl.mac(name).await? {
                Some(existing) if existing == *mac => continue,
                Some(_) => nl.revert(&op).await?,
                None => {}
            }
        }
        nl.apply(&op, |_| None).await?;
    }
    Ok(())
}

/// Apply one peer's entries; a failure is logged, as flannel does, and retried at resync.
async fn apply_peer(nl: &Netlink, backend: &dyn OverlayBackend, lease: &Lease) {
    for op in backend.peer(lease) {
        if let Err(e) = nl.apply(&op, |_| None).await {
            tracing::warn!(peer = %lease.host, "failed to add {op}: {e}");
            return;
        }
    }
}

/// Install flannel's masquerade chains and their jumps in this namespace.
fn install_masq(network: Ipv4Net, subnet: Ipv4Net) -> anyhow::Result<()> {
    crate::firewall::iptables_restore(None, &masq::rules(network, subnet, true))?;
    for (table, chain, rule) in masq::jumps() {
        crate::firewall::ensure_rule(None, table, chain, &rule, crate::firewall::Position::Append)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.to_string());
        n
    }

    fn names(nodes: Option<Vec<Node>>) -> Option<Vec<String>> {
        nodes.map(|ns| ns.iter().filter_map(|n| n.metadata.name.clone()).collect())
    }

    #[test]
    fn a_relist_never_shows_a_half_listed_set() {
        let mut view = NodeView::default();
        assert_eq!(names(view.apply(watcher::Event::Init)), None);
        assert_eq!(
            names(view.apply(watcher::Event::InitApply(node("a")))),
            None
        );
        assert_eq!(
            names(view.apply(watcher::Event::InitApply(node("b")))),
            None
        );
        assert_eq!(
            names(view.apply(watcher::Event::InitDone)),
            Some(vec!["a".into(), "b".into()])
        );
        // The API server restarts: the watch lists again. Until the list is complete, no peer
        // set is offered (before, "b" vanished for the time between the two InitApply).
        assert_eq!(names(view.apply(watcher::Event::Init)), None);
        assert_eq!(
            names(view.apply(watcher::Event::InitApply(node("a")))),
            None
        );
        assert_eq!(
            names(view.apply(watcher::Event::InitApply(node("b")))),
            None
        );
        assert_eq!(
            names(view.apply(watcher::Event::InitDone)),
            Some(vec!["a".into(), "b".into()])
        );
        // A node that went away during the outage is gone after the relist.
        view.apply(watcher::Event::Init);
        view.apply(watcher::Event::InitApply(node("a")));
        assert_eq!(
            names(view.apply(watcher::Event::InitDone)),
            Some(vec!["a".into()])
        );
        assert_eq!(
            names(view.apply(watcher::Event::Apply(node("c")))),
            Some(vec!["a".into(), "c".into()])
        );
        assert_eq!(
            names(view.apply(watcher::Event::Delete(node("a")))),
            Some(vec!["c".into()])
        );
    }
}
