//! `kemu up`: resolve, plan, build the fabric, start the supervisor. A failed `up` rolls back
//! what it made, using the same journal-driven teardown as `down`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::agents::agent_specs;
use super::build::{BuildReport, build};
use super::state::{Journal, LabDir, LabRecord, ProcessRecord};
use super::teardown::teardown;
use crate::plan::{OverlayBy, plan};
use crate::topology::Topology;

/// How `up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// The topology file it came from.
    pub source: Option<PathBuf>,
    /// Build the network only: no supervisor, no agents.
    pub network_only: bool,
    /// The kubeconfig to add the lab's context to (`None`: leave kubeconfigs alone).
    pub kubeconfig: Option<PathBuf>,
}

/// What `up` did.
#[derive(Debug)]
pub struct UpReport {
    pub build: BuildReport,
    pub total: Duration,
    pub supervisor: Option<i32>,
    /// The forwarded API port on 127.0.0.1, once the API server answered.
    pub api_port: Option<u16>,
    /// The nodes as `validate-cluster` found them.
    pub nodes: Vec<super::health::NodeRow>,
}

/// How long `up` waits for the API server, then for the nodes.
const API_TIMEOUT: Duration = Duration::from_secs(30);
const NODES_TIMEOUT: Duration = Duration::from_secs(60);

/// Build the lab of `topo`.
pub fn up(topo: &Topology, opts: &UpOptions) -> anyhow::Result<UpReport> {
    super::check_privileges()?;
    let started = Instant::now();
    let dir = LabDir::new(&topo.name);
    std::fs::create_dir_all(super::state::state_root())
        .with_context(|| format!("create {}", super::state::state_root().display()))?;
    // create_dir is atomic: two `up`s of one lab cannot both get past this line.
    match std::fs::create_dir(&dir.root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "lab {} already exists (state in {}): run `kemu down {}` first, or pick another name with --name",
            topo.name,
            dir.root.display(),
            topo.name
        ),
        Err(e) => return Err(e).with_context(|| format!("create {}", dir.root.display())),
    }
    let with_agents = !opts.network_only && !agent_specs(topo, &dir, None).is_empty();
    let overlay_by = if with_agents {
        OverlayBy::Agents
    } else {
        OverlayBy::Launcher
    };
    let plan = plan(topo, &dir.root, overlay_by);
    let existing: Vec<&str> = plan
        .namespaces
        .iter()
        .map(|ns| ns.name.as_str())
        .filter(|name| crate::netns::exists(name))
        .collect();
    if !existing.is_empty() {
        let _ = std::fs::remove_dir(&dir.root);
        anyhow::bail!(
            "network namespaces of lab {} already exist but kemu has no record of them: {} (remove them with `ip netns delete` if they are yours)",
            topo.name,
            existing.join(", ")
        );
    }
    let record = LabRecord {
        topology: topo.clone(),
        source: opts.source.clone(),
        binary: std::env::current_exe().context("locate the kemu binary")?,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        api_port: None,
        kubeconfig: None,
        pod_id_range: None,
    };
    let mut record = record;
    let result = (|| {
        // The range is chosen under a lock that is released once lab.json records it.
        let (pod_ids, lock) = super::idrange::allocate(&super::state::state_root())?;
        record.pod_id_range = Some(pod_ids);
        record.save(&dir).context("write lab.json")?;
        drop(lock);
        let mut journal = Journal::open(&dir).context("open the lab journal")?;
        let build = build(&plan, &mut journal)?;
        if with_agents {
            crate::proxy::agent::control::write_mode_files(topo, &dir)
                .context("write the proxy mode files")?;
        }
        let mut nodes = Vec::new();
        let supervisor = if !with_agents {
            None
        } else {
            let pid = start_supervisor(&dir, &record)?;
            if let Some(port) = dir.read_api_port() {
                let server = format!("http://127.0.0.1:{port}");
                std::fs::write(
                    dir.kubeconfig(),
                    super::kubeconfig::standalone(&topo.name, &server),
                )
                .with_context(|| format!("write {}", dir.kubeconfig().display()))?;
                record.api_port = Some(port);
                if let Some(path) = &opts.kubeconfig {
                    super::kubeconfig::add(path, &topo.name, &server).with_context(|| {
                        format!("add context kemu-{} to {}", topo.name, path.display())
                    })?;
                    record.kubeconfig = Some(path.clone());
                }
                record.save(&dir).context("write lab.json")?;
                let apiserver_log = dir.logs().join(&topo.master().name).join("apiserver.log");
                super::health::wait_api(port, API_TIMEOUT)
                    .with_context(|| format!("see {}", apiserver_log.display()))?;
                if agent_specs(topo, &dir, None)
                    .iter()
                    .any(|a| a.name == "kubelet")
                {
                    let expected: Vec<String> = topo.minions().map(|h| h.name.clone()).collect();
                    nodes = super::health::wait_nodes(port, &expected, NODES_TIMEOUT)?;
                }
            }
            Some(pid)
        };
        anyhow::Ok(UpReport {
            build,
            total: started.elapsed(),
            supervisor,
            api_port: record.api_port,
            nodes,
        })
    })();
    match result {
        Ok(report) => Ok(report),
        Err(err) => {
            let rollback = teardown(&dir);
            for e in &rollback.errors {
                eprintln!("warning: rollback: {e}");
            }
            Err(err.context(format!(
                "kemu up {} failed; everything it made was removed",
                topo.name
            )))
        }
    }
}

/// Start `kemu supervise LAB` as a daemon (own session, output to logs/supervisor.log) and wait
/// until it has started the agents.
fn start_supervisor(dir: &LabDir, record: &LabRecord) -> anyhow::Result<i32> {
    std::fs::create_dir_all(dir.logs())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.logs().join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(&record.binary);
    cmd.args(["supervise", &record.topology.name])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("start the lab supervisor")?;
    let pid = child.id() as i32;
    // Record it at once: if `up` dies now, `down` still finds it; if it cannot be recorded,
    // nothing would ever stop it.
    if let Some(p) = ProcessRecord::of(pid, "supervisor")
        && let Err(e) = p.register(dir)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(anyhow::Error::from(e).context("register the lab supervisor"));
    }
    // The supervisor is not our child for long: reap it in the background if it exits early.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.agents_json().exists() {
        if crate::lab::state::process_is_dead(pid) {
            // The rollback removes the log with the lab: quote it here.
            let log =
                std::fs::read_to_string(dir.logs().join("supervisor.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "the lab supervisor exited during start-up:\n  {}",
                tail.join("\n  ")
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the lab supervisor did not start within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(pid)
}
