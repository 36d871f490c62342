//! The API server's state: configuration, start-up (store, allocators, service-account keys,
//! built-in objects). The HTTP side is [`super::routes`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use ipnet::Ipv4Net;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::alloc::{Allocators, IpAllocator, PortAllocator};
use super::auth::{
    self,
    token::{self, Signer},
};
use super::object::{new_uid, now_rfc3339, str_at};
use super::registry::Registry;
use super::resources::id;
use super::service;
use super::status::ApiError;
use super::store::{Store, log::LogStore, memory::MemoryStore};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where the store lives; `None` keeps everything in memory only.
    pub data_dir: Option<PathBuf>,
    pub service_cidr: Ipv4Net,
    pub node_port_range: (u16, u16),
    /// Seed for uids, generated names and allocations (random when `None`).
    pub seed: Option<u64>,
    /// The master's address: the `kubernetes` Service's endpoints point at it.
    pub advertise_address: Option<Ipv4Addr>,
    /// Sync each write to disk (survives power loss, not only process crashes).
    pub fsync: bool,
    /// Watch events kept per resource for resuming watches.
    pub watch_history: usize,
    /// PEM private key (ECDSA P-256, PKCS#8: the lab CA's `ca.key`) that signs service-account
    /// tokens; without it a key of this process signs them, and they die with it.
    pub service_account_signing_key_file: Option<PathBuf>,
    /// More PEM private keys whose tokens are accepted (kube's `--service-account-key-file`;
    /// the signing key's own tokens always are).
    pub service_account_key_files: Vec<PathBuf>,
    /// The `ServiceAccount` admission plugin (on unless `--disable-admission-plugins` names it).
    pub service_account_admission: bool,
    /// The secure port, when the server has one (the `kubernetes` Service then points at it).
    pub secure: Option<super::secure::SecureConfig>,
}

/// Shared state of all handlers.
pub struct Api {
    pub registry: Registry,
    pub config: Config,
    /// The address and port actually bound (the port may have been 0).
    pub bound: SocketAddr,
    /// The secure port actually bound, if there is one.
    pub secure_bound: Option<SocketAddr>,
    /// Service-account token keys and audiences.
    pub tokens: auth::Tokens,
}

impl Api {
    /// Open the store, rebuild allocations and reconcile the built-in objects.
    pub fn open(
        config: Config,
        bound: SocketAddr,
        secure_bound: Option<SocketAddr>,
    ) -> anyhow::Result<Api> {
        let store: Box<dyn Store> = match &config.data_dir {
            Some(dir) => Box::new(
                LogStore::open(dir, config.fsync)
                    .with_context(|| format!("opening the store in {}", dir.display()))?,
            ),
            None => Box::new(MemoryStore),
        };
        let alloc = Allocators {
            ips: IpAllocator::new(config.service_cidr),
            ports: PortAllocator::new(config.node_port_range.0, config.node_port_range.1),
        };
        let rng = match config.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        let registry = Registry::open(store, alloc, rng, config.watch_history)?;
        let signer = match &config.service_account_signing_key_file {
            Some(path) => Signer::from_file(path)?,
            None => Signer::ephemeral(),
        };
        let verification_keys = config
            .service_account_key_files
            .iter()
            .map(|p| Signer::from_file(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let api = Api {
            registry,
            config,
            bound,
            secure_bound,
            tokens: auth::Tokens {
                signer,
                verification_keys,
                audiences: vec![token::ISSUER.to_string()],
            },
        };
        api.bootstrap()
            .map_err(|e| anyhow::anyhow!("creating the built-in objects: {e}"))?;
        Ok(api)
    }

    /// The address other hosts reach this server at.
    pub fn advertise_address(&self) -> Ipv4Addr {
        if let Some(ip) = self.config.advertise_address {
            return ip;
        }
        match self.bound.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => Ipv4Addr::LOCALHOST,
        }
    }

    /// Rebuild the allocators from stored Services; create the namespaces and the `kubernetes`
    /// Service with its Endpoints and EndpointSlice (updated when the address or port changed).
    fn bootstrap(&self) -> Result<(), ApiError> {
        let advertise = self.advertise_address().to_string();
        // Pods reach the API through the `kubernetes` Service over HTTPS, as in any cluster;
        // a server without a secure port (tests, the 2015 setup) offers its plain one.
        let port = self.secure_bound.unwrap_or(self.bound).port();
        self.registry.txn(|txn| {
            for svc in txn.list(id::SERVICES, None) {
                let value = svc.value();
                service::restore(txn.alloc(), &value);
            }
            auth::bootstrap_policy(txn)?;
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                if txn.get(id::NAMESPACES, "", ns).is_none() {
                    let uid = new_uid(txn.rng());
                    txn.put(
                        id::NAMESPACES,
                        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {
                            "name": ns, "uid": uid, "creationTimestamp": now_rfc3339(),
                            "labels": {"kubernetes.io/metadata.name": ns}},
                            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                    )?;
                }
            }
            if txn.get(id::SERVICES, "default", "kubernetes").is_none() {
                let first = txn.alloc().ips.first();
                if let Err(e) = txn.alloc().ips.allocate_specific(first) {
                    tracing::warn!("the kubernetes service address {first} is taken: {e:?}");
                }
                let uid = new_uid(txn.rng());
                txn.put(
                    id::SERVICES,
                    json!({"kind": "Service", "apiVersion": "v1", "metadata": {
                        "name": "kubernetes", "namespace": "default", "uid": uid, "creationTimestamp": now_rfc3339(),
                        "labels": {"component": "apiserver", "provider": "kubernetes"}},
                        "spec": {"type": "ClusterIP", "clusterIP": first.to_string(), "clusterIPs": [first.to_string()],
                            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                            "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                            "internalTrafficPolicy": "Cluster"},
                        "status": {"loadBalancer": {}}}),
                )?;
            } else {
                // Keep the target port in step with where this server listens now.
                let svc = txn.get(id::SERVICES, "default", "kubernetes").expect("checked above");
                let mut value = svc.value();
                if value.pointer("/spec/ports/0/targetPort") != Some(&json!(port)) {
                    value["spec"]["ports"][0]["targetPort"] = json!(port);
                    txn.put(id::SERVICES, value)?;
                }
            }
            let endpoints = json!({"kind": "Endpoints", "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": advertise}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
            reconcile(txn, id::ENDPOINTS, endpoints, "/subsets")?;
            let slice = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"}, "generation": 1},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [advertise], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
            reconcile(txn, id::ENDPOINT_SLICES, slice, "/endpoints")?;
            Ok(())
        })
    }
}

/// Create `desired` or bring its content (at `content`, plus ports) up to date.
fn reconcile(
    txn: &mut super::registry::Txn<'_>,
    rt: usize,
    mut desired: Value,
    content: &str,
) -> Result<(), ApiError> {
    let name = str_at(&desired, "/metadata/name").to_string();
    match txn.get(rt, "default", &name) {
        None => {
            let uid = new_uid(txn.rng());
            desired["metadata"]["uid"] = json!(uid);
            desired["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            txn.put(rt, desired)?;
        }
        Some(current) => {
            let current = current.value();
            if current.pointer(content) != desired.pointer(content)
                || current.get("ports") != desired.get("ports")
            {
                let mut updated = current.clone();
                updated[&content[1..]] = desired[&content[1..]].clone();
                if desired.get("ports").is_some() {
                    updated["ports"] = desired["ports"].clone();
                }
                txn.put(rt, updated)?;
            }
        }
    }
    Ok(())
}
