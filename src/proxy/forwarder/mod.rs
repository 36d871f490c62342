//! The userspace forwarder of the 2015 kube-proxy: one listening socket per service port, on
//! its local proxy port (bound to 0.0.0.0 in the host's namespace), where the four
//! `KUBE-PORTALS-*` / `KUBE-NODEPORT-*` chains send the service's traffic.
//!
//! - TCP ([`tcp`]): each accepted connection goes to an endpoint picked by
//!   [`LoadBalancerRR`] (round robin, `sessionAffinity: ClientIP` honoured with its timeout);
//!   when dialling fails the next endpoint is tried, with the 2015 dial timeouts 1, 2, 4 and
//!   8 s. A service port without a usable endpoint resets the connection.
//! - UDP ([`udp`]): one session per client address, each with its own socket towards the
//!   chosen endpoint, dropped after 10 s without traffic (the 2015 `udpIdleTimeout`).
//!
//! Beyond 2015, traffic policies are honoured the way kube-proxy does elsewhere: a TCP
//! connection's original destination (`SO_ORIGINAL_DST`) tells ClusterIP traffic from
//! NodePort/external traffic, and `internalTrafficPolicy: Local` /
//! `externalTrafficPolicy: Local` restrict each to this node's endpoints. The proxy
//! terminates every connection, so a backend always sees the node as the client (as with
//! the real userspace proxy, source IPs are never preserved). UDP has no original
//! destination here and always follows the internal policy.
//!
//! Proxy ports come from a seedable [`ProxyPortAllocator`] and stay the same across syncs for
//! as long as the service port exists; sockets of removed service ports are closed.

pub mod tcp;
pub mod udp;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::{Protocol, ServicePort, ServicePortName, categorize};
use super::roundrobin::{Affinity, LoadBalancerRR};
use super::userspace::ProxyPortAllocator;
use super::{ProxyInput, userspace::EPHEMERAL_PORTS};

/// Which endpoints a connection may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every ready endpoint of the cluster.
    Cluster,
    /// Only this node's endpoints (a `Local` traffic policy).
    Local,
}

/// Balancer keys: one round-robin state per service port and scope.
pub type LbKey = (ServicePortName, Scope);
pub type Balancer = Arc<Mutex<LoadBalancerRR<LbKey>>>;

/// What a connection handler needs to know about its service port; replaced on every sync.
#[derive(Clone, Debug)]
pub struct PortInfo {
    pub name: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: u16,
    pub external_ips: Vec<IpAddr>,
    pub internal_local: bool,
    pub external_local: bool,
}

impl PortInfo {
    fn of(svc: &ServicePort) -> PortInfo {
        PortInfo {
            name: svc.name.clone(),
            cluster_ip: svc.cluster_ip,
            port: svc.port,
            node_port: svc.node_port,
            external_ips: svc
                .external_ips
                .iter()
                .chain(&svc.load_balancer_vips)
                .copied()
                .collect(),
            internal_local: svc.internal_policy_local,
            external_local: svc.external_policy_local,
        }
    }

    /// The endpoints a connection that was sent to `original` may use: external traffic
    /// (node port, external or LB IP) follows `externalTrafficPolicy`, the rest
    /// `internalTrafficPolicy`.
    pub fn scope_for(&self, original: Option<SocketAddr>) -> Scope {
        let external = original.is_some_and(|dst| {
            (self.node_port != 0 && dst.port() == self.node_port && dst.ip() != self.cluster_ip)
                || (dst.port() == self.port && self.external_ips.contains(&dst.ip()))
        });
        let local = if external {
            self.external_local
        } else {
            self.internal_local
        };
        if local { Scope::Local } else { Scope::Cluster }
    }
}

/// Shared, updatable port info.
pub type SharedInfo = Arc<Mutex<PortInfo>>;

/// Pick an endpoint for a client; `reset` forgets its affinity first (after a failed dial).
pub fn pick(lb: &Balancer, key: &LbKey, client: IpAddr, reset: bool) -> Option<SocketAddr> {
    let mut lb = lb.lock().expect("balancer lock");
    if reset {
        lb.reset_session(key, client);
    }
    lb.next_endpoint(key, client, Instant::now())
        .ok()
        .and_then(|ep| ep.parse().ok())
}

/// One proxied service port: its socket's task and what it serves.
struct Proxied {
    port: u16,
    protocol: Protocol,
    affinity: Affinity,
    info: SharedInfo,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // Aborting the task drops its socket (and, for UDP, every session with it).
        self.task.abort();
    }
}

/// How many ports to try when the allocated one cannot be bound (another process has it).
const BIND_ATTEMPTS: usize = 16;

/// The forwarder: the set of open proxy sockets, kept in step with the service ports.
pub struct Forwarder {
    bind: IpAddr,
    ports: ProxyPortAllocator,
    lb: Balancer,
    proxied: BTreeMap<ServicePortName, Proxied>,
}

fn affinity_of(svc: &ServicePort) -> Affinity {
    match svc.affinity_timeout() {
        Some(secs) => Affinity::ClientIp {
            sticky_age: Duration::from_secs(u64::from(secs)),
        },
        None => Affinity::None,
    }
}

impl Forwarder {
    /// A forwarder whose proxy ports and endpoint shuffles follow `seed`.
    pub fn new(seed: u64) -> Forwarder {
        Forwarder {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: ProxyPortAllocator::with_range(seed, EPHEMERAL_PORTS),
            lb: Arc::new(Mutex::new(LoadBalancerRR::new(seed))),
            proxied: BTreeMap::new(),
        }
    }

    /// Open sockets for new service ports, close those of removed ones, and hand the
    /// balancer the current endpoints. Returns the proxy port of every proxied service port
    /// (the renderer's `proxy_ports`). Must run inside a tokio runtime.
    pub fn sync(&mut self, input: &ProxyInput) -> BTreeMap<ServicePortName, u16> {
        let wanted: BTreeMap<&ServicePortName, &ServicePort> = input
            .services
            .iter()
            .filter(|s| matches!(s.name.protocol, Protocol::Tcp | Protocol::Udp))
            .map(|s| (&s.name, s))
            .collect();
        let gone: Vec<ServicePortName> = self
            .proxied
            .keys()
            .filter(|name| !wanted.contains_key(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(p) = self.proxied.remove(&name) {
                tracing::info!(service = %name, port = p.port, "closing proxy socket");
                self.ports.release(p.port);
            }
            let mut lb = self.lb.lock().expect("balancer lock");
            lb.remove_service(&(name.clone(), Scope::Cluster));
            lb.remove_service(&(name, Scope::Local));
        }

        for (name, svc) in &wanted {
            let affinity = affinity_of(svc);
            if let Some(p) = self.proxied.get(*name) {
                *p.info.lock().expect("info lock") = PortInfo::of(svc);
                if p.affinity != affinity {
                    // A new affinity starts a fresh balancer state (2015 kept the old one
                    // until the service was re-created).
                    let mut lb = self.lb.lock().expect("balancer lock");
                    for scope in [Scope::Cluster, Scope::Local] {
                        lb.remove_service(&((*name).clone(), scope));
                        lb.new_service(((*name).clone(), scope), affinity);
                    }
                }
                if let Some(p) = self.proxied.get_mut(*name) {
                    p.affinity = affinity;
                }
            } else if let Some(p) = self.open(svc, affinity) {
                tracing::info!(service = %svc.name, port = p.port, "opened proxy socket");
                let mut lb = self.lb.lock().expect("balancer lock");
                for scope in [Scope::Cluster, Scope::Local] {
                    lb.new_service(((*name).clone(), scope), affinity);
                }
                drop(lb);
                self.proxied.insert((*name).clone(), p);
            }
        }

        let mut lb = self.lb.lock().expect("balancer lock");
        for (name, svc) in &wanted {
            let endpoints = input.endpoints_of(name);
            let cat = categorize(endpoints, svc);
            let addrs = |idx: &[usize]| -> Vec<String> {
                idx.iter().map(|&i| endpoints[i].addr.clone()).collect()
            };
            lb.update_endpoints(&((*name).clone(), Scope::Cluster), &addrs(&cat.cluster));
            lb.update_endpoints(&((*name).clone(), Scope::Local), &addrs(&cat.local));
        }
        drop(lb);

        self.proxied
            .iter()
            .map(|(name, p)| (name.clone(), p.port))
            .collect()
    }

    /// Bind a socket for a service port on a fresh proxy port and start serving it.
    fn open(&mut self, svc: &ServicePort, affinity: Affinity) -> Option<Proxied> {
        let info: SharedInfo = Arc::new(Mutex::new(PortInfo::of(svc)));
        for _ in 0..BIND_ATTEMPTS {
            let port = self.ports.allocate()?;
            let addr = SocketAddr::new(self.bind, port);
            let task = match svc.name.protocol {
                Protocol::Tcp => tcp::listen(addr)
                    .map(|l| tokio::spawn(tcp::serve(l, info.clone(), self.lb.clone()))),
                Protocol::Udp => udp::bind(addr)
                    .map(|s| tokio::spawn(udp::serve(s, info.clone(), self.lb.clone()))),
                Protocol::Sctp => return None,
            };
            match task {
                Ok(task) => {
                    return Some(Proxied {
                        port,
                        protocol: svc.name.protocol,
                        affinity,
                        info,
                        task,
                    });
                }
                // Keep the port marked as used: someone else has it.
                Err(e) => tracing::warn!(service = %svc.name, port, "cannot bind proxy port: {e}"),
            }
        }
        tracing::error!(service = %svc.name, "no free proxy port; the service port gets no rules");
        None
    }

    /// Expire affinity records older than their sticky age (every 5 s in 2015).
    pub fn cleanup_stale_sessions(&self) {
        let now = Instant::now();
        let mut lb = self.lb.lock().expect("balancer lock");
        for name in self.proxied.keys() {
            for scope in [Scope::Cluster, Scope::Local] {
                lb.cleanup_stale_sessions(&(name.clone(), scope), now);
            }
        }
    }

    /// The open proxy ports, as `ns/name:port/protocol` → port.
    pub fn ports(&self) -> BTreeMap<String, u16> {
        self.proxied
            .iter()
            .map(|(name, p)| {
                (
                    format!("{}/{}", name.legacy_string(), p.protocol.as_str()),
                    p.port,
                )
            })
            .collect()
    }

    /// Close every socket.
    pub fn stop(&mut self) {
        for (_, p) in std::mem::take(&mut self.proxied) {
            self.ports.release(p.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PortInfo {
        PortInfo {
            name: ServicePortName::new("default", "web", "", Protocol::Tcp),
            cluster_ip: "192.168.3.84".parse().unwrap(),
            port: 8000,
            node_port: 32606,
            external_ips: vec!["10.9.9.9".parse().unwrap()],
            internal_local: false,
            external_local: true,
        }
    }

    #[test]
    fn original_destination_selects_the_policy() {
        let i = info();
        let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(i.scope_for(at("192.168.3.84:8000")), Scope::Cluster);
        assert_eq!(i.scope_for(at("192.168.0.201:32606")), Scope::Local);
        assert_eq!(i.scope_for(at("127.0.0.1:32606")), Scope::Local);
        assert_eq!(i.scope_for(at("10.9.9.9:8000")), Scope::Local);
        assert_eq!(i.scope_for(None), Scope::Cluster);
        let internal = PortInfo {
            internal_local: true,
            external_local: false,
            ..info()
        };
        assert_eq!(internal.scope_for(at("192.168.3.84:8000")), Scope::Local);
        assert_eq!(
            internal.scope_for(at("192.168.0.201:32606")),
            Scope::Cluster
        );
    }
}
