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
//! - The mode comes from the mode file ([`control`]), re-read on SIGHUP and every 2 s. A new
//!   mode first removes every rule, chain and sysctl of the old one, then syncs the new one.
//!   At start-up the rules of the other modes are removed (a crashed agent may have left
//!   them); on SIGTERM/SIGINT the agent removes its own.
//! - [`control::ProxyStatus`] is written after every sync.

pub mod cache;
pub mod control;
pub mod kernel;
pub mod limiter;
pub mod rules;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
use self::limiter::SyncLimiter;
use super::forwarder::Forwarder;
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
}

impl Agent {
    fn start(cfg: Config) -> anyhow::Result<Agent> {
        let from_file = match &cfg.mode_file {
            Some(path) => control::read_mode(path)?,
            None => None,
        };
        let mode = from_file
            .or(cfg.mode)
            .context("no proxy mode: pass --mode, or --mode-file naming a file that holds one")?;
        let mut node = NodeContext::new(cfg.node_name.clone(), vec![cfg.node_ip]);
        node.cluster_cidr = cfg.cluster_cidr;
        node.service_cidrs = cfg.service_cidrs.clone();
        node.conntrack_tcp_be_liberal = kernel::conntrack_tcp_be_liberal();
        tracing::info!(%mode, node = %cfg.node_name, "starting the service proxy");
        // A previous agent may have died in another mode.
        for other in [
            ProxyMode::Userspace,
            ProxyMode::Iptables,
            ProxyMode::Nftables,
        ] {
            if other != mode {
                match kernel::cleanup(other) {
                    Ok(what) => tracing::debug!(%other, "leftovers removed: {what}"),
                    Err(e) => tracing::warn!(%other, "cannot remove leftovers: {e:#}"),
                }
            }
        }
        kernel::apply_sysctls(mode);
        let limiter = SyncLimiter::new(
            cfg.min_sync_period,
            cfg.sync_period,
            limiter::BURST,
            Instant::now(),
        );
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
        })
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
        self.write_status();

        loop {
            let next = self.next_sync_at();
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => self.check_mode(),
                _ = mode_check.tick() => self.check_mode(),
                _ = session_cleanup.tick() => {
                    if let Some(f) = &self.forwarder {
                        f.cleanup_stale_sessions();
                    }
                }
                event = service_events.next() => match event {
                    Some(Ok(e)) => self.pending |= self.services.apply(e),
                    Some(Err(e)) => tracing::warn!("service watch: {e}"),
                    None => anyhow::bail!("the service watch ended"),
                },
                event = slice_events.next() => match event {
                    Some(Ok(e)) => self.pending |= self.slices.apply(e),
                    Some(Err(e)) => tracing::warn!("endpointslice watch: {e}"),
                    None => anyhow::bail!("the endpointslice watch ended"),
                },
                _ = sleep_until(next) => {
                    // Nothing changed: this is the periodic sync, a full one.
                    if !self.pending && self.retry_at.is_none() {
                        self.full_sync_needed = true;
                    }
                    self.sync();
                }
            }
        }

        tracing::info!(mode = %self.mode, "stopping: removing the proxy's rules");
        if let Some(mut f) = self.forwarder.take() {
            f.stop();
        }
        match kernel::cleanup(self.mode) {
            Ok(what) => tracing::info!("removed {what}"),
            Err(e) => tracing::error!("cannot remove the proxy's rules: {e:#}"),
        }
        self.applied_mode = None;
        self.write_status();
        Ok(())
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

    /// Remove everything of the current mode, then make the next sync (due at once) a full
    /// sync of the new one.
    fn switch_mode(&mut self, new: ProxyMode) {
        let old = self.mode;
        tracing::info!("switching proxy mode {old} -> {new}");
        if let Some(mut f) = self.forwarder.take() {
            f.stop();
        }
        match kernel::cleanup(old) {
            Ok(what) => tracing::info!("removed the {old} rules: {what}"),
            Err(e) => tracing::error!("cannot remove the {old} rules: {e:#}"),
        }
        self.applied_mode = None;
        self.mode = new;
        kernel::apply_sysctls(new);
        self.applied_nat_chains.clear();
        self.applied_restore = None;
        self.full_sync_needed = true;
        self.pending = true;
        self.limiter.sync_now();
        self.retry_at = None;
        self.write_status();
    }

    /// Render everything and apply it.
    fn sync(&mut self) {
        let started = Instant::now();
        let full = self.full_sync_needed;
        self.phases = SyncPhases {
            full,
            ..SyncPhases::default()
        };
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
            ProxyMode::Userspace | ProxyMode::Iptables => self.apply_iptables(input, full),
            ProxyMode::Nftables => self.apply_nftables(input, full),
        };
        self.limiter.took(Instant::now());
        self.last_sync_ms = ms_since(started);
        match result {
            Ok(()) => {
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
        self.write_status();
    }

    /// Both iptables-based modes: one restore, plus the jump rules and stale chains on full
    /// syncs.
    fn apply_iptables(&mut self, mut input: ProxyInput, full: bool) -> anyhow::Result<()> {
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
        let text = render(self.mode, &input);
        // A full sync writes everything (plus missing jumps); the others only the chains that
        // changed since the last applied input.
        let restore = rules::iptables_sync_input(
            self.mode,
            &text,
            save.as_deref(),
            self.applied_restore.as_deref(),
        );
        self.applied_restore = None;
        self.phases.render_ms = ms_since(render_started);
        self.phases.written_bytes = restore.len();
        let kernel = Instant::now();
        if !restore.is_empty() {
            kernel::iptables_restore(&restore)?;
        }
        self.phases.kernel_ms += ms_since(kernel);
        self.applied_nat_chains = rules::chains_after_restore(&text, "nat");
        self.applied_restore = Some(text);
        Ok(())
    }

    /// nftables mode: full syncs rebuild the table, the others patch what changed.
    fn apply_nftables(&mut self, input: ProxyInput, full: bool) -> anyhow::Result<()> {
        self.service_ports = input.services.len();
        let render_started = Instant::now();
        let script = render(ProxyMode::Nftables, &input);
        let apply = rules::nft_sync_input(&script, self.applied_restore.as_deref(), full);
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
