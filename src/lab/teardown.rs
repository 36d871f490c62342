//! Teardown, driven only by the state directory: stop every recorded process (by PID and start
//! time), then everything left in the lab's cgroup, delete every journaled namespace in reverse
//! order, remove the state. It continues
//! after errors, treats "already gone" as success, and reports every failure at the end, so it
//! works after a crash, after a SIGKILL of `up` at any point, and twice in a row.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cgroup::LabCgroup;
use super::state::{Journal, JournalEntry, LabDir, ProcessRecord};
use crate::netns;
use crate::runtime::process::layout;

/// How long processes get between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The processes the kubelets' process runtimes started for this lab: every container's
/// shim and main process, as recorded (PID and start time) in
/// `hosts/<host>/kubelet/runtime/containers/<id>/`.
fn lab_containers(dir: &LabDir) -> Vec<ProcessRecord> {
    let mut out = Vec::new();
    let Ok(hosts) = std::fs::read_dir(dir.root.join("hosts")) else {
        return out;
    };
    for host in hosts.flatten() {
        let Ok(entries) = std::fs::read_dir(host.path().join("kubelet/runtime/containers")) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            let container =
                layout::read_json::<layout::ContainerRecord>(&path.join(layout::CONTAINER))
                    .ok()
                    .flatten()
                    .map(|c| c.process());
            let shim = layout::read_json::<layout::ProcessRecord>(&path.join(layout::SHIM))
                .ok()
                .flatten();
            for (p, what) in [(container, "container"), (shim, "shim")] {
                if let Some(p) = p {
                    out.push(ProcessRecord {
                        pid: p.pid as i32,
                        start_time: p.start_ticks,
                        what: format!("{what} {id}"),
                    });
                }
            }
        }
    }
    out
}

/// What teardown did, and what failed.
#[derive(Debug, Default)]
pub struct TeardownReport {
    pub stopped_processes: usize,
    pub removed_namespaces: usize,
    pub errors: Vec<String>,
}

/// Tear down the lab whose state is in `dir`.
pub fn teardown(dir: &LabDir) -> TeardownReport {
    let mut report = TeardownReport::default();

    // 1. Processes: the supervisor first (it stops its agents gracefully), then whatever is
    //    left (agents of a dead supervisor, container shims).
    let records = ProcessRecord::all(dir);
    super::progress::phase("stopping the lab's processes");
    let (supervisor, others): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|r| r.what == "supervisor");
    report.stopped_processes += stop_processes(
        &supervisor,
        STOP_GRACE + Duration::from_secs(2),
        &mut report.errors,
    );
    let others: Vec<ProcessRecord> = others.into_iter().filter(|r| r.is_alive()).collect();
    report.stopped_processes += stop_processes(&others, STOP_GRACE, &mut report.errors);
    // The pods' containers outlive their kubelet on purpose (a restarted kubelet adopts them),
    // so the kubelets' runtime directories are the record of what is left to stop.
    let containers = lab_containers(dir);
    if containers.iter().any(|c| c.is_alive()) {
        super::progress::phase(format!(
            "waiting for pods to stop ({} container processes)",
            containers.len()
        ));
    }
    report.stopped_processes += stop_processes(&containers, STOP_GRACE, &mut report.errors);
    // The lab's cgroup holds whatever is left, however it got there (a supervisor that `up`
    // started just before it was killed, anything an agent double-forked): it dies with it,
    // and the cgroups go too.
    if let Some(name) = dir.name()
        && let Some(cgroup) = LabCgroup::of(&name)
    {
        match cgroup.kill_and_remove(STOP_GRACE) {
            Ok(killed) => report.stopped_processes += killed,
            Err(e) => report.errors.push(format!(
                "stop the lab's cgroup {}: {e}",
                cgroup.dir.display()
            )),
        }
    }
    for record in ProcessRecord::all(dir)
        .into_iter()
        .chain(lab_containers(dir))
    {
        if record.is_alive() {
            report.errors.push(format!(
                "process {} ({}) is still running",
                record.pid, record.what
            ));
        }
    }

    // The Docker runtime's containers live in the engine, not in the lab's cgroup: with the
    // kubelets gone, every container labelled with the lab's name goes.
    if let Ok(record) = super::state::LabRecord::load(dir)
        && record
            .topology
            .hosts
            .iter()
            .any(|h| h.runtime == crate::runtime::RuntimeKind::Docker)
    {
        super::progress::phase("removing the lab's Docker containers");
        let removed = crate::runtime::docker::socket_from_env().and_then(|socket| {
            crate::runtime::docker::clean_up_lab(&socket, &record.topology.name)
        });
        if let Err(e) = removed {
            report
                .errors
                .push(format!("remove the lab's Docker containers: {e}"));
        }
    }

    // 2. Namespaces, newest first. Deleting a namespace deletes every link inside it, and
    //    deleting one end of a veth deletes its peer.
    match Journal::read(dir) {
        Ok(entries) => {
            let mut seen = std::collections::HashSet::new();
            let total = entries
                .iter()
                .map(|JournalEntry::Namespace(n)| n)
                .collect::<std::collections::HashSet<_>>()
                .len();
            super::progress::phase("removing the namespaces");
            for entry in entries.iter().rev() {
                let JournalEntry::Namespace(name) = entry;
                if !seen.insert(name.clone()) {
                    continue;
                }
                let existed = netns::exists(name);
                match netns::delete(name) {
                    Ok(()) if existed => report.removed_namespaces += 1,
                    Ok(()) => {}
                    Err(e) => report.errors.push(e.to_string()),
                }
                super::progress::count("namespaces removed", seen.len(), total);
            }
        }
        Err(e) => report
            .errors
            .push(format!("read {}: {e}", dir.journal().display())),
    }

    super::progress::phase("removing the lab's state");
    // 3. The lab's kubeconfig context.
    if let Ok(record) = super::state::LabRecord::load(dir)
        && let Some(path) = &record.kubeconfig
        && let Err(e) = super::kubeconfig::forget(
            path,
            &record.topology.name,
            record.previous_context.as_deref(),
        )
    {
        report.errors.push(format!(
            "remove context kemu-{} from {}: {e:#}",
            record.topology.name,
            path.display()
        ));
    }

    // 4. The state directory itself, unless something above failed (it is what a retry needs).
    //    Recursively only when it is marked as a lab's; an unmarked one only when empty.
    if report.errors.is_empty() {
        let removed = if dir.is_lab() {
            dir.owner.remove_dir_all(&dir.root)
        } else {
            match dir.owner.remove_dir(&dir.root) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(e) = removed {
            report
                .errors
                .push(format!("remove {}: {e}", dir.root.display()));
        }
    }
    report
}

/// SIGTERM the processes, wait up to `grace`, SIGKILL the rest, wait until they are gone.
/// Returns how many were running.
pub fn stop_processes(
    records: &[ProcessRecord],
    grace: Duration,
    errors: &mut Vec<String>,
) -> usize {
    let alive: Vec<&ProcessRecord> = records.iter().filter(|r| r.is_alive()).collect();
    for r in &alive {
        signal(r, Signal::SIGTERM, errors);
    }
    if !wait_dead(&alive, grace) {
        for r in alive.iter().filter(|r| r.is_alive()) {
            signal(r, Signal::SIGKILL, errors);
        }
        wait_dead(&alive, Duration::from_secs(5));
    }
    alive.len()
}

fn signal(record: &ProcessRecord, sig: Signal, errors: &mut Vec<String>) {
    // Re-check identity right before signalling: never signal a recycled PID.
    if !record.is_alive() {
        return;
    }
    match kill(Pid::from_raw(record.pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => errors.push(format!(
            "send {sig} to {} ({}): {e}",
            record.pid, record.what
        )),
    }
}

fn wait_dead(records: &[&ProcessRecord], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if records.iter().all(|r| !r.is_alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
