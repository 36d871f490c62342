//! `kemu kubelet`: the node agent of a minion. It registers the Node and heartbeats (`node`),
//! watches the pods bound to it and gives each a worker (`worker`) that refuses the pods kemu
//! will not run (`admission`: host PID or IPC namespace, host paths), makes its network
//! sandbox (`sandbox`, addresses from `ipam`), runs its containers through the runtime,
//! probes them (`probes`) and reports status (`status`); it serves logs and exec (`server`).
//!
//! Restarts are safe: pods keep running while the kubelet is down; a new kubelet adopts the
//! containers and sandboxes it finds on disk for pods still bound to it, and removes the ones
//! of pods that are gone, so no namespace, address or process leaks.

pub mod admission;
pub mod dns;
pub mod env;
pub mod ipam;
pub mod node;
pub mod probes;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::images::manager::ImageManager;
use crate::images::oci::registry::RegistryOptions;
use crate::images::store::Store;
use crate::lab::state::LabDir;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::process::userns::IdRange;
use crate::runtime::{ContainerRuntime, RuntimeKind};
use worker::{Ctx, Worker};

/// Everything the kubelet is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub api_server: String,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub lab: crate::topology::LabName,
    /// State: containers, IP allocations.
    pub root_dir: PathBuf,
    pub pod_mtu: u32,
    pub port: u16,
    pub network_ready_file: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    pub restart_backoff: Duration,
    pub max_pods: u32,
    /// The kemu binary: container shims and built-in images run from it.
    pub kemu_binary: PathBuf,
    /// The host uids and gids pods' user namespaces map onto (the lab's range).
    pub pod_ids: IdRange,
    /// Cluster DNS and the node's resolv.conf, for pods' resolv.conf.
    pub dns: dns::DnsSettings,
    pub runtime: crate::runtime::RuntimeKind,
    /// The Docker engine's unix socket (the docker runtime).
    pub docker_socket: PathBuf,
}

/// Run until SIGTERM (pods keep running).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = crate::client::connect(&cfg.api_server)?;
    let (runtime, images): (Arc<dyn ContainerRuntime>, _) = match cfg.runtime {
        RuntimeKind::Process => {
            let images = image_manager();
            let mut process = ProcessRuntime::new(
                cfg.root_dir.join("runtime"),
                cfg.kemu_binary.clone(),
                cfg.pod_ids,
            )?;
            if let Some(manager) = &images {
                process = process.with_image_store(manager.store().clone());
            }
            (Arc::new(process), images)
        }
        // The engine's images, not kemu's store: no image manager.
        RuntimeKind::Docker => {
            let docker = crate::runtime::docker::connect(&cfg.docker_socket)
                .await
                .map_err(anyhow::Error::msg)?;
            let runtime = crate::runtime::docker::DockerRuntime::new(
                docker,
                cfg.lab.as_ref(),
                &cfg.node_name,
                cfg.kemu_binary.clone(),
            );
            (Arc::new(runtime), None)
        }
    };
    let ipam = ipam::Ipam::new(cfg.pod_cidr, &cfg.root_dir.join("ipam"))
        .context("open the IP allocations")?;
    let host =
        crate::netlink::Netlink::from_socket(&cfg.node_name, crate::netlink::open_socket()?)?;
    let node_cfg = node::NodeConfig {
        name: cfg.node_name.clone(),
        ip: cfg.node_ip,
        pod_cidr: cfg.pod_cidr.to_string(),
        labels: cfg.labels.clone(),
        kubelet_port: cfg.port,
        network_ready_file: cfg.network_ready_file.clone(),
        max_pods: cfg.max_pods,
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = loop {
        match node::register(&nodes, &node_cfg).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::info!(
                    "waiting for the API server to register node {}: {e:#}",
                    cfg.node_name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    tokio::spawn(node::heartbeat(
        client.clone(),
        node_cfg,
        registered.metadata.uid.clone(),
    ));

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        runtime: runtime.clone(),
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip.to_string(),
        lab_dir: LabDir::new(&cfg.lab)?,
        net: sandbox::PodNetConfig {
            lab: cfg.lab.to_string(),
            subnet: cfg.pod_cidr,
            mtu: cfg.pod_mtu,
        },
        ipam,
        host,
        events: crate::events::Recorder::new(client.clone(), "kubelet", Some(&cfg.node_name)),
        registry: Arc::new(Mutex::new(BTreeMap::new())),
        pods_dir: crate::fsguard::OwnedDir::new(cfg.root_dir.join("pods"))?,
        restart_backoff: cfg.restart_backoff,
        base_env: Mutex::new(Vec::new()),
        images,
        dns: cfg.dns.clone(),
        volume_sources: volumes::Sources::start(client.clone()),
        pod_ids: (cfg.runtime == RuntimeKind::Process).then_some(cfg.pod_ids),
    });
    tokio::spawn(service_links(client.clone(), ctx.clone()));

    let listener = tokio::net::TcpListener::bind((cfg.node_ip, cfg.port))
        .await
        .with_context(|| format!("listen on {}:{}", cfg.node_ip, cfg.port))?;
    let app = server::router(ctx.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("kubelet server: {e}");
        }
    });

    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut events = watcher(pods, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut initial: Option<Vec<Pod>> = None;
    let mut adopted_once = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Hand freed heap back to the system now and then: what a burst of pods used would
    // otherwise stay resident.
    let mut trim = tokio::time::interval(TRIM_EVERY);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = term.recv() => return Ok(()),
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                continue;
            }
            _ = trim.tick() => {
                release_free_memory();
                continue;
            }
            event = events.next() => event,
        };
        let Some(event) = event else {
            anyhow::bail!("the pod watch ended")
        };
        let pods: Vec<Pod> = match event {
            Ok(watcher::Event::Init) => {
                initial = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(list) = initial.as_mut() {
                    list.push(pod);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let list = initial.take().unwrap_or_default();
                // Pods that vanished while the watch was down.
                let present: HashSet<String> =
                    list.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                for (uid, tx) in &workers {
                    if !present.contains(uid) {
                        let _ = tx.send(None);
                    }
                }
                if !adopted_once {
                    adopted_once = true;
                    collect_garbage(&ctx, &present).await;
                }
                list
            }
            Ok(watcher::Event::Apply(pod)) => vec![pod],
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(tx) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    let _ = tx.send(None);
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                continue;
            }
        };
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if let Some(tx) = workers.get(&uid) {
                let _ = tx.send(Some(pod));
                continue;
            }
            let adopted: Vec<_> = runtime
                .list()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.pod_uid == uid)
                .collect();
            let worker = Worker::new(ctx.clone(), &pod, adopted);
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let (tx, rx) = watch::channel(Some(pod));
            workers.insert(uid.clone(), tx);
            let done = done_tx.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                worker.run(rx).await;
                ctx.events.forget("Pod", &namespace, &name);
                let _ = done.send(uid);
            });
        }
    }
}

/// The environment variable listing registries (`host:port`, comma-separated) that the
/// kubelet pulls from over plain HTTP, as containerd's `http://` hosts.
pub const PLAIN_HTTP_ENV: &str = "KEMU_PLAIN_HTTP_REGISTRIES";

/// The image store (`$KEMU_IMAGE_DIR` or `/var/lib/kemu/images`) with the pull logic.
fn image_manager() -> Option<Arc<ImageManager>> {
    match Store::open_default() {
        Ok(store) => {
            let plain_http = std::env::var(PLAIN_HTTP_ENV)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let options = RegistryOptions {
                plain_http,
                ..RegistryOptions::default()
            };
            Some(Arc::new(ImageManager::new(store, options)))
        }
        Err(e) => {
            tracing::warn!(
                "the image store cannot be opened, pods run built-in images and host commands only: {e}"
            );
            None
        }
    }
}

/// How often the kubelet returns freed heap memory to the system.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Return freed heap memory to the system. glibc's malloc keeps what a burst of pods used
/// (their specs, statuses, connections) for reuse; a kubelet that ran a hundred pods would
/// keep their high-water mark resident for ever.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// After a restart: remove containers, sandboxes and addresses of pods no longer bound here.
async fn collect_garbage(ctx: &Ctx, present: &HashSet<String>) {
    let mut orphans: HashSet<String> = ctx
        .runtime
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.pod_uid)
        .collect();
    orphans.extend(ctx.ipam.allocations().into_iter().map(|(_, owner)| owner));
    for uid in orphans.difference(present) {
        tracing::info!(%uid, "removing the remains of a pod that is gone");
        worker::clean_up_orphan(ctx, uid).await;
    }
}

/// Keep the `kubernetes` Service's link variables (KUBERNETES_SERVICE_HOST, ...) current.
async fn service_links(client: kube::Client, ctx: Arc<Ctx>) {
    let services: Api<Service> = Api::namespaced(client, "default");
    loop {
        if let Ok(svc) = services.get("kubernetes").await
            && let Some(spec) = svc.spec
            && let Some(ip) = spec.cluster_ip
        {
            let ports: Vec<(Option<String>, i32, String)> = spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect();
            *ctx.base_env.lock().expect("env") = env::service_links("kubernetes", &ip, &ports);
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
