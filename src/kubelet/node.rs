//! The kubelet's Node: registration (labels, podCIDR, addresses, capacity, node info, the
//! kubelet endpoint) and heartbeats, both a Lease in `kube-node-lease` renewed every couple of
//! seconds and the Ready condition's `lastHeartbeatTime` in the Node status, which the node
//! lifecycle controller watches. The node is Ready only once the pod network is (flanneld has
//! written `subnet.env`), as a real kubelet waits for its CNI plugin.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// The version the kubelet reports, matching the API server's.
pub const KUBELET_VERSION: &str = "v1.32.4";
/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How often the Node status is refreshed when nothing changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(4);
/// The Lease duration the kubelet announces.
pub const LEASE_SECONDS: i32 = 40;

/// What the kubelet knows about its node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub labels: BTreeMap<String, String>,
    pub kubelet_port: u16,
    /// The pod network is ready once this file exists (flanneld's subnet.env).
    pub network_ready_file: Option<PathBuf>,
    pub max_pods: u32,
}

impl NodeConfig {
    /// Whether the pod network is ready.
    pub fn network_ready(&self) -> bool {
        self.network_ready_file.as_ref().is_none_or(|f| f.exists())
    }
}

fn host_facts() -> (String, String, String, String) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .map(|kib| format!("{kib}Ki"))
        .unwrap_or_else(|| "0".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into());
    (cpus, memory, kernel, os)
}

fn stable_id(name: &str, what: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("kemu/{name}/{what}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn ready_condition(network_ready: bool, now: Timestamp, since: Timestamp) -> NodeCondition {
    let (status, reason, message) = if network_ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        (
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
        )
    };
    NodeCondition {
        type_: "Ready".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    }
}

fn pressure(
    kind: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
    since: Timestamp,
) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: "False".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    }
}

/// The Node status a kubelet reports.
pub fn node_status(
    cfg: &NodeConfig,
    network_ready: bool,
    now: Timestamp,
    since: Timestamp,
) -> NodeStatus {
    let (cpus, memory, kernel, os) = host_facts();
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(cpus));
    capacity.insert("memory".to_string(), Quantity(memory));
    capacity.insert("pods".to_string(), Quantity(cfg.max_pods.to_string()));
    capacity.insert("ephemeral-storage".to_string(), Quantity("10Gi".into()));
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.name.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            pressure(
                "MemoryPressure",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                now,
                since,
            ),
            pressure(
                "DiskPressure",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                now,
                since,
            ),
            pressure(
                "PIDPressure",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                now,
                since,
            ),
            ready_condition(network_ready, now, since),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: cfg.kubelet_port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            boot_id: stable_id(&cfg.name, "boot"),
            container_runtime_version: format!("kemu://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: kernel,
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: stable_id(&cfg.name, "machine"),
            operating_system: "linux".into(),
            os_image: os,
            system_uuid: stable_id(&cfg.name, "uuid"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Node object the kubelet registers.
pub fn node_object(cfg: &NodeConfig, network_ready: bool, now: Timestamp) -> Node {
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    let mut labels = BTreeMap::from([
        ("beta.kubernetes.io/arch".to_string(), arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch),
        ("kubernetes.io/hostname".to_string(), cfg.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    labels.extend(cfg.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cfg.pod_cidr.clone()),
            pod_cidrs: Some(vec![cfg.pod_cidr.clone()]),
            ..Default::default()
        }),
        status: Some(node_status(cfg, network_ready, now, now)),
    }
}

/// Register the Node, or take over an existing registration (after a kubelet restart).
pub async fn register(nodes: &Api<Node>, cfg: &NodeConfig) -> anyhow::Result<Node> {
    let node = node_object(cfg, cfg.network_ready(), Timestamp::now());
    match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => {
            // Status is not taken from a create: write it through the status subresource.
            let patch = serde_json::json!({"status": node.status});
            let name = cfg.name.as_str();
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({"metadata": {"labels": node.metadata.labels}});
            let existing = nodes
                .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(existing)
        }
        Err(e) => Err(e.into()),
    }
}

/// Heartbeats until the process ends: renew the Lease often, refresh the status regularly and
/// at once when network readiness changes.
pub async fn heartbeat(client: kube::Client, cfg: NodeConfig, node_uid: Option<String>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut since = Timestamp::now();
    let mut last_ready = None;
    let long_ago = std::time::Instant::now() - STATUS_REFRESH - LEASE_RENEW;
    let (mut last_status, mut last_lease) = (long_ago, long_ago);
    // A short tick notices network readiness at once; the Lease and the status keep their
    // own periods.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if last_lease.elapsed() >= LEASE_RENEW {
            match renew_lease(&leases, &cfg, node_uid.as_deref()).await {
                Ok(()) => last_lease = std::time::Instant::now(),
                Err(e) => tracing::warn!("renew lease: {e}"),
            }
        }
        let ready = cfg.network_ready();
        if last_ready != Some(ready) {
            since = Timestamp::now();
        }
        if last_ready != Some(ready) || last_status.elapsed() >= STATUS_REFRESH {
            let status = node_status(&cfg, ready, Timestamp::now(), since);
            let patch = serde_json::json!({"status": status});
            match nodes
                .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    last_ready = Some(ready);
                    last_status = std::time::Instant::now();
                }
                Err(e) => tracing::warn!("update node status: {e}"),
            }
        }
    }
}

async fn renew_lease(
    leases: &Api<Lease>,
    cfg: &NodeConfig,
    node_uid: Option<&str>,
) -> anyhow::Result<()> {
    let now = MicroTime(Timestamp::now());
    let patch = serde_json::json!({"spec": {"renewTime": now, "holderIdentity": cfg.name}});
    match leases
        .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: cfg.name.clone(),
                            uid: uid.to_string(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.name.clone()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
