//! Executes a plan: the thin layer between the pure plan and the kernel.
//!
//! Phase 0 creates the namespaces (several at a time; each on its own short-lived thread that
//! also sets the sysctls and opens a netlink socket there). Phases 1 and 2 run on a
//! single-threaded tokio runtime: every namespace's steps run concurrently with the other
//! namespaces', in plan order within a namespace, and long runs of independent steps (veths on
//! the fabric, overlay peers) are pipelined. Phase 3 writes the files.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use crate::netlink::{ErrorKind, NetOp, Netlink};
use crate::netns::{self, NetNs};
use crate::overlay;
use crate::plan::{Plan, Step};

use super::state::{Journal, JournalEntry};

/// Independent steps sent to the kernel at once within one namespace.
const PIPELINE_DEPTH: usize = 64;
/// Threads creating namespaces in parallel.
const NAMESPACE_WORKERS: usize = 4;

/// What a build produced besides the kernel state.
#[derive(Debug, Default)]
pub struct BuildReport {
    /// Problems that real components would only log (host-gw routes across a router).
    pub warnings: Vec<String>,
    /// Wall time per phase.
    pub phase_times: Vec<(&'static str, Duration)>,
    pub namespaces: usize,
    pub operations: usize,
}

/// Build the lab described by `plan`. Namespaces are journaled before they are created; on
/// error the caller tears down from the journal.
pub fn build(
    plan: &Plan,
    journal: &mut Journal,
    files: &crate::fsguard::OwnedDir,
) -> anyhow::Result<BuildReport> {
    let mut report = BuildReport {
        namespaces: plan.namespaces.len(),
        operations: plan.operation_count(),
        ..BuildReport::default()
    };
    let entries: Vec<JournalEntry> = plan
        .namespaces
        .iter()
        .map(|ns| JournalEntry::Namespace(ns.name.clone()))
        .collect();
    journal.append(&entries).context("write the lab journal")?;

    let started = Instant::now();
    let handles = create_namespaces(plan)?;
    report.phase_times.push(("namespaces", started.elapsed()));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the netlink runtime")?;
    runtime.block_on(async {
        let mut netlinks = Vec::with_capacity(handles.len());
        let mut fds = HashMap::new();
        for (ns, socket) in &handles {
            fds.insert(ns.name().to_string(), ns.as_raw_fd());
            let socket = socket
                .lock()
                .expect("socket")
                .take()
                .expect("socket taken once");
            netlinks.push(Netlink::from_socket(ns.name(), socket)?);
        }
        for (phase, name) in [(1u8, "links"), (2, "configuration")] {
            let started = Instant::now();
            let mut per_ns: Vec<Vec<&Step>> = vec![Vec::new(); plan.namespaces.len()];
            for step in plan.steps.iter().filter(|s| s.phase() == phase) {
                per_ns[step.namespace().expect("net steps have a namespace") as usize].push(step);
            }
            let runs = per_ns
                .iter()
                .enumerate()
                .filter(|(_, steps)| !steps.is_empty())
                .map(|(i, steps)| run_namespace(plan, &netlinks[i], steps, &fds));
            for result in futures::future::join_all(runs).await {
                report.warnings.extend(result?);
            }
            report.phase_times.push((name, started.elapsed()));
        }
        anyhow::Ok(())
    })?;

    let started = Instant::now();
    for step in &plan.steps {
        if let Step::File { path, contents } = step {
            if let Some(dir) = path.parent() {
                files
                    .create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            files
                .write(path, contents.as_bytes())
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    report.phase_times.push(("files", started.elapsed()));
    Ok(report)
}

type SocketSlot = Mutex<Option<netlink_sys::Socket>>;

/// Create every namespace of the plan, a few at a time, each with its sysctls set and a
/// netlink socket opened inside it.
fn create_namespaces(plan: &Plan) -> anyhow::Result<Vec<(NetNs, SocketSlot)>> {
    let next = AtomicUsize::new(0);
    type Slot = Option<anyhow::Result<(NetNs, SocketSlot)>>;
    let results: Mutex<Vec<Slot>> = Mutex::new((0..plan.namespaces.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..NAMESPACE_WORKERS.min(plan.namespaces.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = plan.namespaces.get(i) else {
                        break;
                    };
                    let result = NetNs::create(&spec.name, || {
                        netns::write_sysctls(spec.sysctls)?;
                        crate::netlink::open_socket()
                    })
                    .map(|(ns, socket)| (ns, Mutex::new(Some(socket))))
                    .map_err(anyhow::Error::from);
                    results.lock().expect("results")[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every namespace attempted"))
        .collect()
}

/// Run one namespace's steps of a phase: in order, pipelining runs of independent steps.
async fn run_namespace(
    plan: &Plan,
    nl: &Netlink,
    steps: &[&Step],
    fds: &HashMap<String, i32>,
) -> anyhow::Result<Vec<String>> {
    let backend = overlay::backend(plan.backend);
    let peer_fd = |name: &str| fds.get(name).copied();
    let mut warnings = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let batch_end = steps[i..]
            .iter()
            .position(|s| !pipelined(s))
            .map_or(steps.len(), |p| i + p)
            .max(i + 1);
        let batch = &steps[i..batch_end];
        i = batch_end;
        let outcomes: Vec<Option<String>> = futures::stream::iter(batch.iter().map(|step| async {
            match step {
                Step::Link { op, .. } | Step::Net { op, .. } => nl.apply(op, peer_fd).await.map(|_| None).map_err(anyhow::Error::from),
                Step::OverlayPeer { lease, .. } => {
                    let lease = &plan.leases[*lease as usize];
                    for op in backend.peer(lease) {
                        if let Err(err) = nl.apply(&op, peer_fd).await {
                            if matches!(err.kind, ErrorKind::Unreachable) {
                                // Real flannel logs this and keeps running: host-gw cannot
                                // route to a peer that is not on the same L2 segment.
                                return Ok(Some(format!(
                                    "{}: cannot route to {} ({}) via {}: {} is not on this host's segment ({} backend needs every host on one L2 segment)",
                                    nl.namespace(),
                                    lease.subnet,
                                    lease.host,
                                    lease.public_ip,
                                    lease.public_ip,
                                    backend.name(),
                                )));
                            }
                            return Err(err.into());
                        }
                    }
                    Ok(None)
                }
                _ => unreachable!("only net steps run in namespaces"),
            }
        }))
        .buffered(PIPELINE_DEPTH)
        .try_collect()
        .await?;
        warnings.extend(outcomes.into_iter().flatten());
    }
    Ok(warnings)
}

/// Steps that do not depend on each other within a namespace.
fn pipelined(step: &Step) -> bool {
    matches!(
        step,
        Step::OverlayPeer { .. }
            | Step::Link {
                op: NetOp::Veth { .. },
                ..
            }
    )
}
