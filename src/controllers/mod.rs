//! `kemu controller-manager`: the controllers of kube-controller-manager a kemu lab needs, in one
//! process on one current-thread runtime.
//!
//! - [`informer`]: one list+watch per resource type, shared by every controller (a cache with
//!   write-through of the controllers' own writes); [`queue`]: work queues of keys;
//!   [`expectations`]: the creations and deletions a controller waits to see.
//! - [`replication`]: ReplicationControllers and ReplicaSets keep their pods.
//! - [`deployment`]: Deployments roll out ReplicaSets (rolling update, recreate, history).
//! - [`endpoints`]: Endpoints and EndpointSlices of Services with a selector.
//! - [`nodelifecycle`]: heartbeats, NotReady/Unknown conditions, taints, rate-limited and
//!   zone-aware pod eviction.
//! - [`gc`]: the garbage collector (dangling owners, `orphan` and `foregroundDeletion`).
//! - [`serviceaccounts`]: every namespace's `default` ServiceAccount and `kube-root-ca.crt`.
//! - [`job`]: Jobs run pods to completion (parallelism, back-off, deadlines, TTL, indexes).
//! - [`cronjob`]: CronJobs create Jobs on their schedule.
//! - [`daemon`]: DaemonSets keep one pod on every eligible node.
//! - [`history`]: the ControllerRevisions of DaemonSets and StatefulSets.
//! - [`statefulset`]: StatefulSets keep ordinal pods and their claims.
//! - [`volume`]: binds PersistentVolumeClaims and provisions local-path volumes.
//! - [`namespace`]: a namespace being deleted is emptied, then finalized.
//!
//! Every controller is driven by watch events: a change queues the keys it affects and a sync
//! works from the caches, so an idle cluster costs nothing. The caches hold typed objects of the
//! kinds the controllers read (pods, nodes, leases, services, endpoints, endpoint slices,
//! replication controllers, replica sets, deployments, jobs, cron jobs, daemon sets, stateful
//! sets, controller revisions, claims, volumes, storage classes, namespaces).

pub mod cronjob;
pub mod daemon;
pub mod deployment;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod queue;
pub mod replication;
pub mod serviceaccounts;
pub mod statefulset;
pub mod util;
pub mod volume;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use either::Either;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use informer::Informer;

/// Controller-manager configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// API server URL.
    pub master: String,
    /// How long a node may stay silent (no Lease renewal, no Ready heartbeat) before it is
    /// marked `Unknown`.
    pub node_monitor_grace_period: Duration,
    /// How long pods stay on a node that is not Ready before they are evicted.
    pub pod_eviction_timeout: Duration,
    /// How fast nodes that are not Ready are tainted for eviction, by zone state.
    pub eviction_rates: nodelifecycle::zones::Rates,
    /// Seed for generated names (pod and EndpointSlice suffixes).
    pub seed: Option<u64>,
    /// The cluster CA (PEM) published to every namespace as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
    /// Where the local-path provisioner makes the directories of the volumes it provisions
    /// (under the lab's state directory); `None` provisions nothing.
    pub local_path_root: Option<std::path::PathBuf>,
}

/// What every controller shares: the client, the informers and the name generator.
pub struct Shared {
    pub client: kube::Client,
    pub pods: Informer<Pod>,
    pub nodes: Informer<Node>,
    pub leases: Informer<Lease>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub slices: Informer<EndpointSlice>,
    pub rcs: Informer<ReplicationController>,
    pub rss: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub jobs: Informer<Job>,
    pub cronjobs: Informer<CronJob>,
    pub daemonsets: Informer<DaemonSet>,
    pub statefulsets: Informer<StatefulSet>,
    pub revisions: Informer<ControllerRevision>,
    pub pvcs: Informer<PersistentVolumeClaim>,
    pub pvs: Informer<PersistentVolume>,
    pub storageclasses: Informer<StorageClass>,
    pub namespaces: Informer<Namespace>,
    rng: Mutex<ChaCha8Rng>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Informers not yet started.
    pub fn new(client: kube::Client, seed: Option<u64>) -> Shared {
        Shared {
            client,
            pods: Informer::new(),
            nodes: Informer::new(),
            leases: Informer::new(),
            services: Informer::new(),
            endpoints: Informer::new(),
            slices: Informer::new(),
            rcs: Informer::new(),
            rss: Informer::new(),
            deployments: Informer::new(),
            jobs: Informer::new(),
            cronjobs: Informer::new(),
            daemonsets: Informer::new(),
            statefulsets: Informer::new(),
            revisions: Informer::new(),
            pvcs: Informer::new(),
            pvs: Informer::new(),
            storageclasses: Informer::new(),
            namespaces: Informer::new(),
            rng: Mutex::new(match seed {
                Some(seed) => ChaCha8Rng::seed_from_u64(seed),
                None => ChaCha8Rng::from_os_rng(),
            }),
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Wait until every informer has its initial list: no controller may act on a partial view
    /// (an RC synced before the pods are listed would create its pods twice).
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// `<prefix><5 random characters>` from the seeded generator.
    pub fn generate_name(&self, prefix: &str) -> String {
        util::generate_name(prefix, &mut *self.rng.lock().expect("rng lock"))
    }

    /// Put the answer to our DELETE of `pod` into the cache: still there (graceful deletion) or
    /// gone.
    pub fn observe_pod_deletion(&self, pod: &Pod, answer: Either<Pod, kube::core::Status>) {
        match answer {
            Either::Left(p) if p.metadata.deletion_timestamp.is_some() => self.pods.observe(p),
            Either::Left(p) => self.pods.observe_deleted(&p),
            Either::Right(_) => self.pods.observe_deleted(pod),
        }
    }

    fn start(&self) {
        let c = &self.client;
        self.pods.start(Api::all(c.clone()));
        self.nodes.start(Api::all(c.clone()));
        self.leases
            .start(Api::namespaced(c.clone(), nodelifecycle::LEASE_NAMESPACE));
        self.services.start(Api::all(c.clone()));
        self.endpoints.start(Api::all(c.clone()));
        self.slices.start(Api::all(c.clone()));
        self.rcs.start(Api::all(c.clone()));
        self.rss.start(Api::all(c.clone()));
        self.deployments.start(Api::all(c.clone()));
        self.jobs.start(Api::all(c.clone()));
        self.cronjobs.start(Api::all(c.clone()));
        self.daemonsets.start(Api::all(c.clone()));
        self.statefulsets.start(Api::all(c.clone()));
        self.revisions.start(Api::all(c.clone()));
        self.pvcs.start(Api::all(c.clone()));
        self.pvs.start(Api::all(c.clone()));
        self.storageclasses.start(Api::all(c.clone()));
        self.namespaces.start(Api::all(c.clone()));
    }

    async fn wait_ready(&self) {
        self.wait_informers().await;
        self.synced.send_replace(true);
    }

    async fn wait_informers(&self) {
        self.pods.wait_ready().await;
        self.nodes.wait_ready().await;
        self.leases.wait_ready().await;
        self.services.wait_ready().await;
        self.endpoints.wait_ready().await;
        self.slices.wait_ready().await;
        self.rcs.wait_ready().await;
        self.rss.wait_ready().await;
        self.deployments.wait_ready().await;
        self.jobs.wait_ready().await;
        self.cronjobs.wait_ready().await;
        self.daemonsets.wait_ready().await;
        self.statefulsets.wait_ready().await;
        self.revisions.wait_ready().await;
        self.pvcs.wait_ready().await;
        self.pvs.wait_ready().await;
        self.storageclasses.wait_ready().await;
        self.namespaces.wait_ready().await;
    }
}

/// Run every controller until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = crate::client::connect(&cfg.master)?;
    let shared = Arc::new(Shared::new(client, cfg.seed));
    // Each controller registers its handlers when it is made (before the informers start, so
    // the initial lists queue every object once) and starts working once all caches are synced.
    let controllers = vec![
        tokio::spawn(replication::run::<ReplicationController>(shared.clone())),
        tokio::spawn(replication::run::<ReplicaSet>(shared.clone())),
        tokio::spawn(deployment::run(shared.clone())),
        tokio::spawn(endpoints::run(shared.clone())),
        tokio::spawn(nodelifecycle::run(
            shared.clone(),
            nodelifecycle::Settings {
                grace_period: cfg.node_monitor_grace_period,
                eviction_timeout: cfg.pod_eviction_timeout,
                rates: cfg.eviction_rates,
            },
        )),
        tokio::spawn(gc::run(shared.clone())),
        tokio::spawn(serviceaccounts::run(
            shared.client.clone(),
            cfg.root_ca.clone(),
        )),
        tokio::spawn(job::run(shared.clone())),
        tokio::spawn(cronjob::run(shared.clone())),
        tokio::spawn(daemon::run(shared.clone())),
        tokio::spawn(statefulset::run(shared.clone())),
        tokio::spawn(volume::run(shared.clone(), cfg.local_path_root.clone())),
        tokio::spawn(namespace::run(shared.clone())),
    ];
    shared.start();
    shared.wait_ready().await;
    tracing::info!("controller caches synced");
    for c in controllers {
        c.await?;
    }
    Ok(())
}
