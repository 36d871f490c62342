//! `kemu netpol`: the per-node NetworkPolicy agent. It runs in a minion's network namespace
//! (the lab supervisor starts it beside the proxy and flanneld) and keeps the node's
//! `table inet kemu-netpol` equal to what the pure renderer makes of the cluster's Pods,
//! Namespaces and NetworkPolicies:
//!
//! ```text
//! watch Pods        ─┐                       sync task (a blocking thread):
//! watch Namespaces  ─┼─ caches ─ pending ──▶  model::build ─ nft::table ─ nft -f
//! watch Policies    ─┘    ▲                   (the difference to the applied table)
//!                         └── changes that arrive during a sync are coalesced into the next
//! ```
//!
//! The watches keep running while a sync renders and applies, so a burst of changes costs one
//! sync more, not one per change. A sync writes what changed since the table it applied last
//! (the whole table at the start, after a failure and every `--sync-period`) in one `nft -f`
//! transaction: packets see the old rules or the new ones, never a mix. The agent removes its
//! table when it stops; a node without isolated pods has no table. The service proxy's mode
//! does not matter: the table decides after its DNAT (any mode) and before any SNAT.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use super::{model, nft};
use crate::proxy::agent::cache::Cache;

/// Delay before retrying a failed sync.
const RETRY: Duration = Duration::from_secs(1);

/// Everything the agent needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// API server URL, e.g. `http://192.168.0.201:8080`.
    pub master: String,
    pub node_name: String,
    /// Where to write [`NetpolStatus`] after every sync.
    pub status_file: Option<PathBuf>,
    /// Time between periodic syncs (which re-apply the table if something changed it).
    pub sync_period: Duration,
}

/// What the agent last did, as JSON in its status file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetpolStatus {
    pub node: String,
    pub pid: u32,
    pub syncs: u64,
    /// The highest resourceVersion among the objects the last successful sync saw: a
    /// change with a resourceVersion up to this one is enforced.
    pub applied_version: u64,
    /// The same for NetworkPolicies alone (each watch delivers its own kind in order, so a
    /// policy write with this resourceVersion or lower is in the kernel).
    pub applied_policy_version: u64,
    /// When the last successful sync finished, in milliseconds since the Unix epoch.
    pub applied_at_ms: u64,
    /// Isolated pods on this node after the last sync.
    pub isolated_pods: usize,
    /// Policies the agent knows (all namespaces).
    pub policies: usize,
    /// Duration of the last sync (model, render, apply), in milliseconds.
    pub last_sync_ms: f64,
    /// Of which `nft -f` (0 when the table was already right).
    pub last_apply_ms: f64,
    pub error: Option<String>,
}

impl NetpolStatus {
    pub fn read(path: &std::path::Path) -> Option<NetpolStatus> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        crate::fsguard::parent_of(path)?
            .write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Run the agent until SIGTERM/SIGINT, on a current-thread runtime.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let runtime = crate::client::agent_runtime()?;
    runtime.block_on(async move { Agent::new(cfg).run().await })
}

/// The objects one sync works on (owned: the sync runs on another thread).
struct Snapshot {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    policies: Vec<NetworkPolicy>,
    version: u64,
    policy_version: u64,
}

/// What a sync did.
struct Synced {
    table: nft::Table,
    isolated_pods: usize,
    apply_ms: f64,
}

/// Build the model, make the node's table and bring the kernel's to it: nothing when it is
/// the same as `applied`, else only the difference (the whole table when there is no
/// `applied`, or when the difference fails to apply).
fn sync(node: &str, snapshot: &Snapshot, applied: Option<&nft::Table>) -> anyhow::Result<Synced> {
    let pods: Vec<&Pod> = snapshot.pods.iter().collect();
    let namespaces: Vec<&Namespace> = snapshot.namespaces.iter().collect();
    let policies: Vec<&NetworkPolicy> = snapshot.policies.iter().collect();
    let model = model::build(
        model::Objects {
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
        },
        Some(node),
    );
    let table = nft::table(&model, node);
    let mut apply_ms = 0.0;
    if applied != Some(&table) {
        let started = Instant::now();
        if let Err(e) = crate::firewall::nft_apply(None, &nft::transaction(applied, &table)) {
            if applied.is_none() {
                return Err(e);
            }
            tracing::warn!("applying the difference failed, replacing the table: {e:#}");
            crate::firewall::nft_apply(None, &nft::transaction(None, &table))?;
        }
        apply_ms = started.elapsed().as_secs_f64() * 1e3;
    }
    Ok(Synced {
        isolated_pods: model.pods.len(),
        table,
        apply_ms,
    })
}

struct Agent {
    cfg: Config,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
    policies: Cache<NetworkPolicy>,
    /// The table in the kernel; `None` before the first sync and after a failure.
    applied: Option<nft::Table>,
    /// An object changed since the last sync started.
    pending: bool,
    retry_at: Option<Instant>,
    last_sync: Instant,
    status: NetpolStatus,
}

/// A running sync: its result, the versions of its snapshot, when it started.
type SyncTask = tokio::task::JoinHandle<(anyhow::Result<Synced>, (u64, u64), Instant)>;

impl Agent {
    fn new(cfg: Config) -> Agent {
        let status = NetpolStatus {
            node: cfg.node_name.clone(),
            pid: std::process::id(),
            ..NetpolStatus::default()
        };
        Agent {
            cfg,
            pods: Cache::default(),
            namespaces: Cache::default(),
            policies: Cache::default(),
            applied: None,
            pending: true,
            retry_at: None,
            last_sync: Instant::now(),
            status,
        }
    }

    fn ready(&self) -> bool {
        self.pods.ready && self.namespaces.ready && self.policies.ready
    }

    /// When the next sync may start: at once when something changed, at the retry time
    /// after a failure, else the periodic sync; never before every watch has listed.
    fn next_sync_at(&self) -> Option<Instant> {
        if !self.ready() {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if self.pending {
            return Some(Instant::now());
        }
        Some(self.last_sync + self.cfg.sync_period)
    }

    fn start_sync(&mut self) -> SyncTask {
        self.pending = false;
        self.retry_at = None;
        self.last_sync = Instant::now();
        let snapshot = Snapshot {
            pods: self.pods.objects().cloned().collect(),
            namespaces: self.namespaces.objects().cloned().collect(),
            policies: self.policies.objects().cloned().collect(),
            version: self
                .pods
                .max_version
                .max(self.namespaces.max_version)
                .max(self.policies.max_version),
            policy_version: self.policies.max_version,
        };
        let node = self.cfg.node_name.clone();
        let applied = self.applied.take();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = sync(&node, &snapshot, applied.as_ref());
            (result, (snapshot.version, snapshot.policy_version), started)
        })
    }

    fn finish_sync(
        &mut self,
        result: anyhow::Result<Synced>,
        (version, policy_version): (u64, u64),
        started: Instant,
    ) {
        self.status.last_sync_ms = started.elapsed().as_secs_f64() * 1e3;
        self.status.policies = self.policies.len();
        match result {
            Ok(synced) => {
                self.status.syncs += 1;
                self.status.applied_version = version;
                self.status.applied_policy_version = policy_version;
                self.status.applied_at_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default();
                self.status.isolated_pods = synced.isolated_pods;
                self.status.last_apply_ms = synced.apply_ms;
                self.status.error = None;
                if synced.apply_ms > 0.0 {
                    tracing::debug!(
                        isolated = synced.isolated_pods,
                        ms = self.status.last_sync_ms,
                        "applied the policy table"
                    );
                }
                self.applied = Some(synced.table);
            }
            Err(e) => {
                tracing::error!("sync failed: {e:#}");
                self.status.error = Some(format!("{e:#}"));
                self.applied = None;
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.write_status();
    }

    fn write_status(&self) {
        if let Some(path) = &self.cfg.status_file
            && let Err(e) = self.status.write(path)
        {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        tracing::info!(node = %self.cfg.node_name, "starting the NetworkPolicy agent");
        let client = crate::client::connect(&self.cfg.master)?;
        let mut pod_events = watcher(Api::<Pod>::all(client.clone()), Default::default())
            .default_backoff()
            .boxed();
        let mut ns_events = watcher(Api::<Namespace>::all(client.clone()), Default::default())
            .default_backoff()
            .boxed();
        let mut policy_events = watcher(Api::<NetworkPolicy>::all(client), Default::default())
            .default_backoff()
            .boxed();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut task: Option<SyncTask> = None;
        self.write_status();
        loop {
            // No new sync while one runs; its end is the next event.
            let next = if task.is_some() {
                None
            } else {
                self.next_sync_at()
            };
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                event = pod_events.next() => match event {
                    Some(Ok(e)) => self.pending |= self.pods.apply(e),
                    Some(Err(e)) => tracing::warn!("pod watch: {e}"),
                    None => anyhow::bail!("the pod watch ended"),
                },
                event = ns_events.next() => match event {
                    Some(Ok(e)) => self.pending |= self.namespaces.apply(e),
                    Some(Err(e)) => tracing::warn!("namespace watch: {e}"),
                    None => anyhow::bail!("the namespace watch ended"),
                },
                event = policy_events.next() => match event {
                    Some(Ok(e)) => self.pending |= self.policies.apply(e),
                    Some(Err(e)) => tracing::warn!("networkpolicy watch: {e}"),
                    None => anyhow::bail!("the networkpolicy watch ended"),
                },
                done = join(task.as_mut()) => {
                    task = None;
                    match done {
                        Ok((result, version, started)) => self.finish_sync(result, version, started),
                        Err(e) => anyhow::bail!("the sync task failed: {e}"),
                    }
                }
                _ = sleep_until(next) => {
                    // The periodic sync re-applies the table even if the text is unchanged
                    // (someone may have flushed it).
                    if !self.pending && self.retry_at.is_none() {
                        self.applied = None;
                    }
                    task = Some(self.start_sync());
                }
            }
        }
        if let Some(task) = task {
            let _ = task.await;
        }
        tracing::info!("stopping: removing the policy table");
        if let Err(e) = crate::firewall::nft_apply(None, &nft::remove()) {
            tracing::error!("cannot remove the policy table: {e:#}");
        }
        Ok(())
    }
}

async fn join(
    task: Option<&mut SyncTask>,
) -> Result<(anyhow::Result<Synced>, (u64, u64), Instant), tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
