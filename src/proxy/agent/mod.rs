//! `kemu proxy`: the per-node service proxy agent. It runs inside a minion's network namespace
//! (the lab supervisor starts it) and keeps that namespace's rules equal to what the pure
//! renderer makes of the cluster's Services and EndpointSlices:
//!
//! ```text
//! watch Services ─┐                        ┌─ userspace: forwarder sockets + iptables-restore
//!                 ├─ caches ─ sync ─ render ┼─ iptables:  iptables-restore --noflush
//! watch Slices  ──┘   ▲                    └─ nftables:  nft -f -
//!                     └── at most every --min-sync-period, and every --sync-period
//! ```
//!
//! - Every sync renders the whole rule set and applies it in one atomic command. Changes are
//!   coalesced kube-proxy style ([`limiter`]: `BoundedFrequencyRunner` with a burst of 2): a
//!   change after a quiet period syncs at once, and so does the next one; a stream of changes
//!   syncs once per `--min-sync-period`; with no change a periodic sync runs every
//!   `--sync-period`.
//! - Full syncs (the first, after a mode switch or a failure, and the periodic ones) also
//!   read `iptables-save`: to ensure the mode's jump rules in the built-in chains and, in
//!   iptables mode, to delete service chains no longer needed. Other syncs only restore.
//! - The mode comes from the mode file ([`control`]), re-read on SIGHUP and every 2 s. With
//!   kemu's profile a new mode first removes every rule, chain and sysctl of the old one, at
//!   start-up the rules of the other modes are removed (a crashed agent may have left them)
//!   and on SIGTERM/SIGINT the agent removes its own. With a kube-proxy version
//!   ([`crate::proxy::profile`]) it does what that release does: from 1.15 the old mode's
//!   rules stay, and nothing is removed on exit.
//! - After a sync, stale UDP conntrack entries are deleted as the profile's release does
//!   ([`crate::proxy::conntrack`]), through netlink. The entries are known from the
//!   namespace's conntrack events, read as they come: a cleanup dumps the table only at the
//!   start and after lost events.
//! - Health (`--healthz-bind-address`, with a listener per health check node port) and
//!   metrics (`--metrics-bind-address`) are served as kube-proxy serves them ([`http`]).
//! - [`control::ProxyStatus`] is written after every sync.

pub mod cache;
pub mod control;
pub mod http;
pub mod kernel;
pub mod limiter;
pub mod metrics;
pub mod rules;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::signal::unix::{SignalKind, signal};

use self::cache::Cache;
use self::control::{ProxyStatus, SyncPhases};
use self::http::{Endpoint, Shared, SharedState};
use self::limiter::SyncLimiter;
use super::conntrack;
use super::conntrack::table::ConntrackTable;
use super::forwarder::Forwarder;
use super::nfnetlink::Nfnl;
use super::profile::{ConntrackCleanup, ModeSwitch, ProxyProfile, SyncOutput};
use super::{NodeContext, ProxyInput, ProxyMode, render};

/// How often the mode file is re-read without a SIGHUP.
const MODE_CHECK: Duration = Duration::from_secs(2);
/// How often stale ClientIP affinity records are dropped (2015: every 5 s).
const SESSION_CLEANUP: Duration = Duration::from_secs(5);
/// Delay before retrying a failed sync.
const RETRY: Duration = Duration::from_secs(1);

/// Everything the agent needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// API server URL, e.g. `http://192.168.0.201:8080`.
    pub master: String,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub cluster_cidr: Option<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    /// The mode when the mode file is missing.
    pub mode: Option<ProxyMode>,
    pub mode_file: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
    /// Seed of the proxy-port allocator and the endpoint shuffles.
    pub seed: u64,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// The behaviours of the emulated release (kemu's own without `--version`).
    pub profile: ProxyProfile,
    /// `--iptables-localhost-nodeports`.
    pub localhost_node_ports: bool,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--healthz-bind-address` (health checks, also the port of health check node ports'
    /// listeners); `None` serves nothing.
    pub healthz_bind: Option<SocketAddr>,
    /// `--metrics-bind-address`; `None` serves nothing.
    pub metrics_bind: Option<SocketAddr>,
}

/// Run the agent until SIGTERM/SIGINT, on a current-thread runtime.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let runtime = crate::client::agent_runtime()?;
    runtime.block_on(async move { Agent::start(cfg)?.run().await })
}

struct Agent {
    cfg: Config,
    node: NodeContext,
    /// The mode being run.
    mode: ProxyMode,
    /// The mode whose rules are in the kernel right now.
    applied_mode: Option<ProxyMode>,
    forwarder: Option<Forwarder>,
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    /// iptables mode: nat chains left by the last restore (for the stale-chain cleanup).
    applied_nat_chains: Vec<String>,
    /// The whole rule set (restore input or nft script) the kernel's rules now match: partial
    /// syncs write only what differs from it. `None` after a failure or a mode switch.
    applied_restore: Option<String>,
    full_sync_needed: bool,
    /// An object changed since the last sync.
    pending: bool,
    limiter: SyncLimiter,
    retry_at: Option<Instant>,
    syncs: u64,
    service_ports: usize,
    applied_version: u64,
    last_sync_ms: f64,
    phases: SyncPhases,
    last_error: Option<String>,
    /// The last syncs, for the status file.
    recent_syncs: std::collections::VecDeque<control::SyncRecord>,
    /// The input of the last successful sync (an empty one before the first): what
    /// conntrack cleanup and kube-proxy's partial syncs compare against.
    applied_input: ProxyInput,
    /// What the health and metrics endpoints report.
    shared: SharedState,
    /// Listeners of health check node ports: port → (service, task).
    health_check_ports: HashMap<u16, (String, tokio::task::AbortHandle)>,
    /// iptables rules (filter, nat) after the last sync and written by it.
    rule_counts: ((usize, usize), (usize, usize)),
    /// nftables with a kube-proxy profile: chains a partial sync flushed (`ip kube-proxy
    /// NAME`) and when.
    stale_nft_chains: Vec<(String, Instant)>,
    /// The namespace's UDP conntrack entries, kept from the kernel's events so that a
    /// cleanup needs no dump; `None` when the profile never cleans up.
    conntrack_table: Option<ConntrackTable>,
}

impl Agent {
    fn start(cfg: Config) -> anyhow::Result<Agent> {
        let from_file = match &cfg.mode_file {
            Some(path) => control::read_mode(path)?,
            None => None,
        };
        let mode = from_file.or(cfg.mode).unwrap_or(cfg.profile.default_mode);
        cfg.profile
            .check_mode(mode)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut node = NodeContext::new(cfg.node_name.clone(), vec![cfg.node_ip]);
        node.cluster_cidr = cfg.cluster_cidr;
        node.service_cidrs = cfg.service_cidrs.clone();
        node.conntrack_tcp_be_liberal = kernel::conntrack_tcp_be_liberal();
        node.masquerade_all = cfg.masquerade_all;
        node.localhost_node_ports = cfg.localhost_node_ports;
        tracing::info!(%mode, node = %cfg.node_name, profile = %cfg.profile.describe(), "starting the service proxy");
        // A previous agent may have died in another mode (kube-proxy ≥ 1.15 leaves them).
        for other in cfg.profile.cleanup_at_start(mode) {
            match kernel::cleanup(other, cfg.profile.mode_switch == ModeSwitch::Clean) {
                Ok(what) => tracing::debug!(%other, "leftovers removed: {what}"),
                Err(e) => tracing::warn!(%other, "cannot remove leftovers: {e:#}"),
            }
        }
        kernel::apply_sysctls(mode, &node);
        let limiter = SyncLimiter::new(
            cfg.min_sync_period,
            cfg.sync_period,
            limiter::BURST,
            Instant::now(),
        );
        let shared = Arc::new(Mutex::new(Shared::new(cfg.sync_period * 2)));
        let applied_input = ProxyInput::from_objects(node.clone(), &[], &[]);
        // Listen before the first sync, and list the table once now rather than in it.
        let conntrack_table = (cfg.profile.conntrack != ConntrackCleanup::None).then(|| {
            let mut table = ConntrackTable::open(conntrack::table::EVENT_BUFFER);
            let listed = Nfnl::open().and_then(|mut nfnl| table.flows(&mut nfnl, false));
            if let Err(e) = listed {
                tracing::warn!("cannot list the conntrack table: {e}");
            }
            table
        });
        // A restarted agent keeps its predecessor's sync history: the time line goes on.
        let recent_syncs = cfg
            .status_file
            .as_deref()
            .and_then(ProxyStatus::read)
            .map(|s| s.recent_syncs)
            .unwrap_or_default();
        Ok(Agent {
            cfg,
            node,
            mode,
            applied_mode: None,
            forwarder: None,
            services: Cache::default(),
            slices: Cache::default(),
            applied_nat_chains: Vec::new(),
            applied_restore: None,
            full_sync_needed: true,
            pending: true,
            limiter,
            retry_at: None,
            syncs: 0,
            service_ports: 0,
            applied_version: 0,
            last_sync_ms: 0.0,
            phases: SyncPhases::default(),
            last_error: None,
            recent_syncs,
            applied_input,
            shared,
            health_check_ports: HashMap::new(),
            rule_counts: ((0, 0), (0, 0)),
            stale_nft_chains: Vec::new(),
            conntrack_table,
        })
    }

    /// The health and metrics listeners.
    async fn serve_endpoints(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.cfg.healthz_bind {
            http::start(addr, Endpoint::Health, self.shared.clone())
                .await
                .with_context(|| format!("listen on {addr} (--healthz-bind-address)"))?;
        }
        if let Some(addr) = self.cfg.metrics_bind {
            http::start(addr, Endpoint::Metrics, self.shared.clone())
                .await
                .with_context(|| format!("listen on {addr} (--metrics-bind-address)"))?;
        }
        Ok(())
    }

    /// Open and close health check node port listeners to match the services
    /// (`ServiceHealthServer.SyncServices`): one per `healthCheckNodePort`, on all addresses.
    async fn sync_health_check_ports(&mut self, input: &ProxyInput) {
        let Some(bind) = self.cfg.healthz_bind else {
            return;
        };
        let wanted: HashMap<u16, String> = input
            .services
            .iter()
            .filter(|s| s.health_check_node_port != 0)
            .map(|s| (s.health_check_node_port, s.name.service_key()))
            .collect();
        self.health_check_ports.retain(|port, (service, task)| {
            let keep = wanted.get(port) == Some(service);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, service) in wanted {
            if self.health_check_ports.contains_key(&port) {
                continue;
            }
            let (namespace, name) = service.split_once('/').unwrap_or(("", &service));
            let endpoint = Endpoint::Service {
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            let addr = SocketAddr::new(bind.ip(), port);
            match http::start(addr, endpoint, self.shared.clone()).await {
                Ok(task) => {
                    self.health_check_ports.insert(port, (service, task));
                }
                Err(e) => tracing::warn!("health check node port {port} of {service}: {e}"),
            }
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let client = crate::client::connect(&self.cfg.master)?;
        let mut service_events = watcher(Api::<Service>::all(client.clone()), Default::default())
            .default_backoff()
            .boxed();
        let mut slice_events = watcher(Api::<EndpointSlice>::all(client), Default::default())
            .default_backoff()
            .boxed();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut mode_check = tokio::time::interval(MODE_CHECK);
        let mut session_cleanup = tokio::time::interval(SESSION_CLEANUP);
        // Readiness of the conntrack event listener (a duplicate of its descriptor: the
        // table itself stays in `self`).
        let conntrack_events = match &self.conntrack_table {
            Some(table) => table.event_fd()?,
            None => None,
        }
        // SAFETY: the AsyncFd owns the duplicate, which stays open (the same descriptor) until
        // the AsyncFd is dropped, deregistering it.
        .map(|fd| unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        })
        .transpose()?;
        self.serve_endpoints().await?;
        self.write_status();

        loop {
            let next = self.next_sync_at();
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => self.check_mode(),
                _ = mode_check.tick() => self.check_mode(),
                ready = readable(conntrack_events.as_ref()) => {
                    let mut guard = ready?;
                    self.read_conntrack_events();
                    // Read until the socket said EAGAIN: wait for the next edge.
                    guard.clear_ready();
                }
                _ = session_cleanup.tick() => {
                    if let Some(f) = &self.forwarder {
                        f.cleanup_stale_sessions();
                    }
                }
                event = service_events.next() => match event {
                    Some(Ok(e)) => {
                        let changed = self.services.apply(e);
                        self.queue(changed);
                    }
                    Some(Err(e)) => tracing::warn!("service watch: {e}"),
                    None => anyhow::bail!("the service watch ended"),
                },
                event = slice_events.next() => match event {
                    Some(Ok(e)) => {
                        let changed = self.slices.apply(e);
                        self.queue(changed);
                    }
                    Some(Err(e)) => tracing::warn!("endpointslice watch: {e}"),
                    None => anyhow::bail!("the endpointslice watch ended"),
                },
                _ = sleep_until(next) => {
                    // Nothing changed: this is the periodic sync, a full one.
                    if !self.pending && self.retry_at.is_none() {
                        self.full_sync_needed = true;
                    }
                    let input = self.sync();
                    if let Some(input) = input {
                        self.sync_health_check_ports(&input).await;
                    }
                }
            }
        }

        if let Some(mut f) = self.forwarder.take() {
            f.stop();
        }
        if self.cfg.profile.version.is_some() {
            // kube-proxy exits leaving its rules (only `--cleanup` removes them).
            tracing::info!(mode = %self.mode, "stopping: the rules stay, as kube-proxy's do");
        } else {
            tracing::info!(mode = %self.mode, "stopping: removing the proxy's rules");
            match kernel::cleanup(self.mode, true) {
                Ok(what) => tracing::info!("removed {what}"),
                Err(e) => tracing::error!("cannot remove the proxy's rules: {e:#}"),
            }
            self.applied_mode = None;
        }
        self.write_status();
        Ok(())
    }

    /// Note a change to sync (and, for the health check, since when it waits).
    fn queue(&mut self, changed: bool) {
        if !changed {
            return;
        }
        self.pending = true;
        let mut shared = self.shared.lock().expect("agent state lock");
        shared.queued_since.get_or_insert_with(Instant::now);
    }

    /// When the next sync is due; `None` until both watches have listed once.
    fn next_sync_at(&self) -> Option<Instant> {
        if !(self.services.ready && self.slices.ready) {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        let pending = self.pending || self.full_sync_needed;
        Some(self.limiter.next(pending, Instant::now()))
    }

    /// Re-read the mode file and switch when it names another mode.
    fn check_mode(&mut self) {
        let Some(path) = &self.cfg.mode_file else {
            return;
        };
        let wanted = match control::read_mode(path) {
            Ok(Some(mode)) => mode,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("{e:#}; keeping mode {}", self.mode);
                return;
            }
        };
        if wanted != self.mode {
            self.switch_mode(wanted);
        }
    }

    /// Switch to `new` as the profile says (kemu: remove everything of the old mode; a
    /// kube-proxy release: what a kube-proxy restarted in the new mode removes, often
    /// nothing), then make the next sync (due at once) a full sync of the new one.
    fn switch_mode(&mut self, new: ProxyMode) {
        let old = self.mode;
        if let Err(e) = self.cfg.profile.check_mode(new) {
            tracing::error!("cannot switch to {new}: {e}; keeping {old}");
            return;
        }
        tracing::info!("switching proxy mode {old} -> {new}");
        if let Some(mut f) = self.forwarder.take() {
            f.stop();
        }
        let clean = self.cfg.profile.mode_switch == ModeSwitch::Clean;
        let remove: Vec<ProxyMode> = if clean {
            vec![old]
        } else {
            self.cfg.profile.cleanup_at_start(new)
        };
        if !remove.contains(&old) {
            tracing::info!("the {old} rules stay, as kube-proxy leaves them (run --cleanup)");
        }
        for mode in remove {
            match kernel::cleanup(mode, clean) {
                Ok(what) => tracing::info!("removed the {mode} rules: {what}"),
                Err(e) => tracing::error!("cannot remove the {mode} rules: {e:#}"),
            }
        }
        self.applied_mode = None;
        self.mode = new;
        kernel::apply_sysctls(new, &self.node);
        self.applied_nat_chains.clear();
        self.applied_restore = None;
        self.full_sync_needed = true;
        self.pending = true;
        self.limiter.sync_now();
        self.retry_at = None;
        self.write_status();
    }

    /// Render everything and apply it; returns the input when the sync succeeded.
    fn sync(&mut self) -> Option<ProxyInput> {
        let started = Instant::now();
        // kube-proxy before 1.26 wrote (and ensured) everything on every sync.
        let full =
            self.full_sync_needed || self.cfg.profile.sync_output == SyncOutput::KubeProxyFull;
        self.phases = SyncPhases {
            full,
            ..SyncPhases::default()
        };
        if full && self.mode == ProxyMode::Iptables {
            self.ensure_nfacct();
        }
        let mut input = ProxyInput::from_objects(
            self.node.clone(),
            self.services.objects(),
            self.slices.objects(),
        );
        let version = self.services.max_version.max(self.slices.max_version);
        self.pending = false;
        if self.mode == ProxyMode::Userspace {
            let seed = self.cfg.seed;
            let forwarder = self.forwarder.get_or_insert_with(|| Forwarder::new(seed));
            input.proxy_ports = forwarder.sync(&input);
        }
        self.phases.input_ms = ms_since(started);
        let result = match self.mode {
            ProxyMode::Userspace | ProxyMode::Iptables => self.apply_iptables(&mut input, full),
            ProxyMode::Nftables => self.apply_nftables(&input, full),
        };
        input.existing_nat_chains = Vec::new();
        input.changed_services = None;
        self.limiter.took(Instant::now());
        self.last_sync_ms = ms_since(started);
        self.record_sync(full, started, result.is_ok(), &input);
        let synced = result.is_ok().then(|| input.clone());
        let endpoints = input.endpoints.values().map(Vec::len).sum();
        match result {
            Ok(()) => {
                self.cleanup_conntrack(&input);
                self.applied_input = input;
                self.syncs += 1;
                self.applied_mode = Some(self.mode);
                self.applied_version = version;
                self.full_sync_needed = false;
                self.retry_at = None;
                self.last_error = None;
                tracing::debug!(
                    mode = %self.mode,
                    full,
                    ports = self.service_ports,
                    ms = self.last_sync_ms,
                    phases = ?self.phases,
                    "synced"
                );
            }
            Err(e) => {
                tracing::error!(mode = %self.mode, "sync failed: {e:#}");
                self.last_error = Some(format!("{e:#}"));
                self.full_sync_needed = true;
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.remember_sync(endpoints);
        self.write_status();
        synced
    }

    /// Add the sync that just ended to the recent ones of the status file.
    fn remember_sync(&mut self, endpoints: usize) {
        if self.recent_syncs.len() == control::RECENT_SYNCS {
            self.recent_syncs.pop_front();
        }
        self.recent_syncs.push_back(control::SyncRecord {
            at: jiff::Timestamp::now(),
            mode: self.mode,
            full: self.phases.full,
            ms: self.last_sync_ms,
            service_ports: self.service_ports,
            endpoints,
            conntrack_deleted: self.phases.conntrack_deleted,
            error: self.last_error.clone(),
        });
    }

    /// kube-proxy ensures its nfacct counters on every full sync and uses in its rules only
    /// those it could create (`nfAcctCounters`).
    fn ensure_nfacct(&mut self) {
        let profile = &self.cfg.profile;
        let wanted = [
            (
                profile.nfacct_invalid_drop,
                metrics::CT_STATE_INVALID_DROPPED,
            ),
            (
                profile.nfacct_localhost,
                metrics::LOCALHOST_NODEPORTS_ACCEPTED,
            ),
        ];
        let mut nfnl = match Nfnl::open() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("no nfacct counters (netfilter netlink: {e})");
                None
            }
        };
        let mut ensure = |on: bool, name: &str| -> bool {
            on && nfnl.as_mut().is_some_and(|n| match n.ensure_counter(name) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("cannot create nfacct counter {name}: {e}");
                    false
                }
            })
        };
        self.node.nfacct_invalid_drop = ensure(wanted[0].0, wanted[0].1);
        self.node.nfacct_localhost = ensure(wanted[1].0, wanted[1].1);
        let mut shared = self.shared.lock().expect("agent state lock");
        shared.nfacct = (self.node.nfacct_invalid_drop, self.node.nfacct_localhost);
    }

    /// Apply the queued conntrack events to the index.
    fn read_conntrack_events(&mut self) {
        if let Some(table) = &mut self.conntrack_table
            && let Err(e) = table.read_events()
        {
            tracing::warn!("conntrack events: {e}");
        }
    }

    /// Delete the UDP conntrack entries the profile's release deletes after this sync.
    fn cleanup_conntrack(&mut self, input: &ProxyInput) {
        let mode = match self.mode {
            // The userspace proxier opens its own connections: nothing to clean.
            ProxyMode::Userspace => return,
            ProxyMode::Iptables | ProxyMode::Nftables => self.cfg.profile.conntrack,
        };
        if !conntrack::cleanup_needed(mode, &self.applied_input, input) {
            return;
        }
        let Some(table) = &mut self.conntrack_table else {
            return;
        };
        let started = Instant::now();
        let ipv6 = self.node.family() == super::model::IpFamily::V6;
        let result = Nfnl::open().and_then(|mut nfnl| {
            let (flows, source) = table.flows(&mut nfnl, ipv6)?;
            let stale = conntrack::stale_flows(mode, &flows, &self.applied_input, input);
            tracing::debug!(
                ?source,
                flows = flows.len(),
                stale = stale.len(),
                "conntrack"
            );
            table.delete(&mut nfnl, &stale)
        });
        let seconds = started.elapsed().as_secs_f64();
        self.phases.conntrack_ms = seconds * 1e3;
        match result {
            Ok(deleted) => {
                self.phases.conntrack_deleted = deleted;
                let mut shared = self.shared.lock().expect("agent state lock");
                shared.metrics.conntrack_deleted_entries += deleted as u64;
                shared
                    .metrics
                    .conntrack_reconciler_duration
                    .observe(seconds);
                if deleted > 0 {
                    tracing::info!(
                        deleted,
                        ms = seconds * 1e3,
                        "stale UDP conntrack entries deleted"
                    );
                }
            }
            Err(e) => tracing::error!("conntrack cleanup: {e}"),
        }
    }

    /// Update what the health and metrics endpoints report.
    fn record_sync(&mut self, full: bool, started: Instant, ok: bool, input: &ProxyInput) {
        let seconds = started.elapsed().as_secs_f64();
        let mut shared = self.shared.lock().expect("agent state lock");
        let m = &mut shared.metrics;
        m.mode = self.mode.to_string();
        if !ok {
            match self.mode {
                ProxyMode::Nftables => m.nftables_sync_failures += 1,
                _ if full => m.restore_failures += 1,
                _ => {
                    m.restore_failures += 1;
                    m.partial_restore_failures += 1;
                }
            }
            return;
        }
        m.sync_duration.observe(seconds);
        if full {
            m.full_sync_duration.observe(seconds);
        } else {
            m.partial_sync_duration.observe(seconds);
        }
        m.last_sync_timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        m.iptables_total = self.rule_counts.0;
        m.iptables_last = self.rule_counts.1;
        let mut internal = 0;
        let mut external = 0;
        for svc in &input.services {
            let cat = super::model::categorize(input.endpoints_of(&svc.name), svc);
            if cat.has_any && svc.internal_policy_local && cat.local.is_empty() {
                internal += 1;
            }
            if cat.has_any
                && svc.external_policy_local
                && svc.externally_accessible()
                && cat.local.is_empty()
            {
                external += 1;
            }
        }
        m.no_local_endpoints = (internal, external);
        shared.last_updated = SystemTime::now();
        shared.queued_since = None;
        // `LocalReadyEndpoints`: local ready endpoint IPs per service.
        let mut local: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
        for (name, eps) in &input.endpoints {
            for ep in eps.iter().filter(|e| e.is_local && e.ready) {
                local.entry(name.service_key()).or_default().insert(ep.ip);
            }
        }
        shared.local_endpoints = local.into_iter().map(|(k, v)| (k, v.len())).collect();
    }

    /// Both iptables-based modes: one restore, plus the jump rules and stale chains on full
    /// syncs.
    fn apply_iptables(&mut self, input: &mut ProxyInput, full: bool) -> anyhow::Result<()> {
        self.service_ports = match self.mode {
            ProxyMode::Userspace => input.proxy_ports.len(),
            _ => input.services.len(),
        };
        let kernel = Instant::now();
        let save = if full {
            Some(kernel::iptables_save()?)
        } else {
            None
        };
        self.phases.kernel_ms = ms_since(kernel);
        let render_started = Instant::now();
        if self.mode == ProxyMode::Iptables {
            input.existing_nat_chains = match &save {
                Some(save) => rules::saved_chains(save, "nat"),
                None => self.applied_nat_chains.clone(),
            };
        }
        // kube-proxy's partial sync: the changed services' chains, written whole.
        let kube_proxy_partial = !full
            && self.mode == ProxyMode::Iptables
            && self.cfg.profile.sync_output == SyncOutput::KubeProxy
            && self.applied_restore.is_some();
        if kube_proxy_partial {
            input.changed_services = Some(ProxyInput::changed_services(&self.applied_input, input));
        }
        let (text, skipped_nat_rules) = match self.mode {
            ProxyMode::Iptables => super::iptables::render_counted(input),
            _ => (render(self.mode, input), 0),
        };
        // A full sync writes everything (plus missing jumps); kemu's partial syncs only the
        // chains that changed since the last applied input, kube-proxy's the whole partial
        // render.
        let restore = if kube_proxy_partial {
            text.clone()
        } else {
            rules::iptables_sync_input(
                self.mode,
                &text,
                save.as_deref(),
                self.applied_restore.as_deref(),
            )
        };
        self.applied_restore = None;
        self.phases.render_ms = ms_since(render_started);
        self.phases.written_bytes = restore.len();
        let kernel = Instant::now();
        if !restore.is_empty() {
            kernel::iptables_restore(&restore)?;
        }
        self.phases.kernel_ms += ms_since(kernel);
        let written = rules::rule_counts(&restore);
        let rendered = rules::rule_counts(&text);
        self.applied_nat_chains = if kube_proxy_partial {
            rules::chains_after_partial(&self.applied_nat_chains, &text, "nat")
        } else {
            rules::chains_after_restore(&text, "nat")
        };
        // kube-proxy subtracts its `-X` lines from the lines it wrote; `rule_counts` only
        // counts `-A` lines, so the rules of skipped services are all there is to add.
        self.rule_counts = ((rendered.0, rendered.1 + skipped_nat_rules), written);
        self.applied_restore = Some(text);
        Ok(())
    }

    /// nftables mode: full syncs rebuild the table, the others patch what changed.
    fn apply_nftables(&mut self, input: &ProxyInput, full: bool) -> anyhow::Result<()> {
        self.service_ports = input.services.len();
        let render_started = Instant::now();
        let script = render(ProxyMode::Nftables, input);
        // kube-proxy's partial sync: its transaction, and the chains it flushed deleted by
        // a sync at least a second later.
        let kube_proxy_partial = !full
            && self.cfg.profile.sync_output == SyncOutput::KubeProxy
            && self.applied_restore.is_some();
        if !kube_proxy_partial {
            // A full render replaces the whole table; kemu's patches delete what is gone.
            self.stale_nft_chains.clear();
        }
        let previous = self.applied_restore.take();
        let apply = match previous.as_deref() {
            Some(previous) if kube_proxy_partial => {
                self.delete_stale_nft_chains();
                let changed = ProxyInput::changed_services(&self.applied_input, input);
                let tx = super::nftables::kube_proxy_partial(previous, &script, &changed);
                let now = Instant::now();
                let declared = |chain: &str| script.contains(&format!("add chain {chain}\n"));
                self.stale_nft_chains.retain(|(chain, _)| !declared(chain));
                for chain in tx.lines().filter_map(|l| l.strip_prefix("flush chain ")) {
                    if !declared(chain) && !self.stale_nft_chains.iter().any(|(c, _)| c == chain) {
                        self.stale_nft_chains.push((chain.to_string(), now));
                    }
                }
                tx
            }
            previous => rules::nft_sync_input(&script, previous, full),
        };
        self.applied_restore = None;
        self.phases.render_ms = ms_since(render_started);
        self.phases.written_bytes = apply.len();
        let kernel = Instant::now();
        if !apply.is_empty() {
            kernel::nft_apply(&apply)?;
        }
        self.phases.kernel_ms = ms_since(kernel);
        self.applied_restore = Some(script);
        Ok(())
    }

    /// Delete the service chains a kube-proxy partial sync flushed at least a second ago
    /// (kube-proxy's `staleChains`: with kernels before 6.2 a chain may still look
    /// referenced for a moment after the map element pointing at it was deleted).
    fn delete_stale_nft_chains(&mut self) {
        let due = Instant::now() - Duration::from_secs(1);
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stale_nft_chains)
            .into_iter()
            .partition(|(_, at)| *at <= due);
        self.stale_nft_chains = young;
        if old.is_empty() {
            return;
        }
        let tx: String = old
            .iter()
            .map(|(chain, _)| format!("delete chain {chain}\n"))
            .collect();
        // As kube-proxy: a failure is retried when the chains turn up stale again.
        if let Err(e) = kernel::nft_apply(&tx) {
            tracing::warn!("cannot delete stale nftables chains: {e:#}");
        }
    }

    fn write_status(&self) {
        let Some(path) = &self.cfg.status_file else {
            return;
        };
        let status = ProxyStatus {
            node: self.cfg.node_name.clone(),
            pid: std::process::id(),
            mode: self.applied_mode,
            syncs: self.syncs,
            service_ports: self.service_ports,
            applied_version: self.applied_version,
            last_sync_ms: self.last_sync_ms,
            last_sync_phases: self.phases,
            error: self.last_error.clone(),
            proxy_ports: self
                .forwarder
                .as_ref()
                .map(Forwarder::ports)
                .unwrap_or_default(),
            recent_syncs: self.recent_syncs.clone(),
        };
        if let Err(e) = status.write(path) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Readiness of `fd`, or never without one.
async fn readable(
    fd: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, std::os::fd::OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}
