//! The per-lab supervisor (`kemu supervise LAB`), a small daemon in the root namespace that
//! `kemu up` starts ([`launch`]) and `kemu down` stops. It starts every agent inside its host's
//! namespace and cgroup, records their PIDs, restarts them when they exit (with back-off, like
//! a kubelet restarting containers), serves the lab's HTTPS endpoint on 127.0.0.1, and
//! publishes its agents' state in `agents.json` for `kemu status`.
//!
//! A supervisor can die (SIGKILL, OOM): its agents and pods keep running, unsupervised, and the
//! endpoint is gone. `kemu repair` (or `kemu up` of the same lab) launches a new one, which
//! adopts every recorded agent that is still alive (watching it through a pidfd, since it is
//! not its child) instead of starting a second copy, and serves the endpoint on the same port
//! again when it can.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::agents::{AgentSpec, KEMU_BINARY, agent_specs};
use super::cgroup::LabCgroup;
use super::state::{LabDir, LabRecord, ProcessRecord};
use crate::netns::NetNs;
use crate::topology::LabName;

/// First restart delay; doubles up to the agent's limit and resets after a long healthy run.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// How long a launch may go without the supervisor making progress before `up` gives up.
const LAUNCH_STALL: Duration = Duration::from_secs(10);

/// An agent as `agents.json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub host: String,
    pub name: String,
    pub command: String,
    pub pid: Option<i32>,
    /// `running`, `backoff` or `stopped`.
    pub state: String,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Seconds since the epoch of the current start.
    pub started: Option<u64>,
    /// Whether the running process was adopted from a supervisor that died.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// What the supervisor says about itself in `supervisor.json`: written while it starts (so a
/// launcher can tell progress from a hang) and once it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorState {
    pub pid: i32,
    /// `starting` or `running`.
    pub phase: String,
    /// Agents started or adopted so far, of `total`.
    pub agents: usize,
    pub total: usize,
    /// Agents taken over from a supervisor that had died.
    pub adopted: usize,
    /// Seconds since the epoch.
    pub since: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read `agents.json`.
pub fn read_status(dir: &LabDir) -> Vec<AgentStatus> {
    std::fs::read_to_string(dir.agents_json())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Read `supervisor.json`.
pub fn read_state(dir: &LabDir) -> Option<SupervisorState> {
    serde_json::from_str(&std::fs::read_to_string(dir.supervisor_json()).ok()?).ok()
}

/// The recorded supervisor process, if one is alive.
pub fn alive(dir: &LabDir) -> Option<ProcessRecord> {
    ProcessRecord::all(dir)
        .into_iter()
        .find(|p| p.what == "supervisor" && p.is_alive())
}

/// Start `kemu supervise LAB` as a daemon (own session, the lab's supervisor cgroup, output to
/// logs/supervisor.log) and wait until it runs every agent. There is no fixed time limit:
/// `launch` waits as long as the supervisor makes progress, so a lab of a thousand hosts takes
/// the time it needs, and fails when the supervisor dies or stalls.
pub fn launch(dir: &LabDir, record: &LabRecord) -> anyhow::Result<i32> {
    dir.owner.create_dir_all(&dir.logs())?;
    let log = dir.owner.open_append(&dir.logs().join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(&record.binary);
    cmd.args(["supervise", record.topology.name.as_str()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Into the lab's cgroup before it executes: nothing it ever starts can escape `down`.
    let cgroup = LabCgroup::of(&record.topology.name);
    let procs = match &cgroup {
        Some(cg) => Some(
            cg.open_procs(&cg.supervisor())
                .with_context(|| format!("create the lab's cgroup {}", cg.dir.display()))?,
        ),
        None => None,
    };
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: setsid and write are async-signal-safe; the cgroup file stays open until spawn
    // returns.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if let Some(fd) = procs_fd {
                super::cgroup::join_before_exec(fd)?;
            }
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("start the lab supervisor")?;
    drop(procs);
    let pid = child.id() as i32;
    // Record it at once: if `up` dies now, `down` still finds it (by PID where there is no
    // cgroup); if it cannot be recorded, nothing would ever stop it.
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
    let mut last = (Instant::now(), None::<SupervisorState>);
    loop {
        let state = read_state(dir).filter(|s| s.pid == pid);
        if state.as_ref().is_some_and(|s| s.phase == "running") {
            return Ok(pid);
        }
        if crate::lab::state::process_is_dead(pid) {
            // A rollback removes the log with the lab: quote it here.
            let log =
                std::fs::read_to_string(dir.logs().join("supervisor.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "the lab supervisor exited during start-up:\n  {}",
                tail.join("\n  ")
            );
        }
        if state != last.1 {
            if let Some(s) = &state {
                super::progress::count("agents started", s.agents, s.total);
            }
            last = (Instant::now(), state);
        } else if last.0.elapsed() > LAUNCH_STALL {
            let progress = last
                .1
                .map(|s| format!("{} of {} agents started", s.agents, s.total))
                .unwrap_or_else(|| "no agent started".into());
            anyhow::bail!(
                "the lab supervisor made no progress for {} s ({progress}); see {}",
                LAUNCH_STALL.as_secs(),
                dir.logs().join("supervisor.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Agent {
    spec: AgentSpec,
    ns: NetNs,
    /// The host's cgroup (`cgroup.procs`, open), which the agent joins before it executes.
    cgroup: Option<std::fs::File>,
    log: PathBuf,
    status: AgentStatus,
    record: Option<ProcessRecord>,
    backoff: Duration,
    max_backoff: Duration,
}

/// Run the supervisor of `lab` until SIGTERM/SIGINT. Blocks.
pub fn run(lab: &LabName) -> anyhow::Result<()> {
    let dir = LabDir::new(lab)?;
    let record = LabRecord::load(&dir)?;
    if let Some(me) = ProcessRecord::of(std::process::id() as i32, "supervisor") {
        me.register(&dir)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(supervise(dir, record))
}

/// The longest restart delay of an agent. The control plane must come back well within the
/// node grace period: a crash-looping API server whose restarts drift apart by 10 s would make
/// every kubelet's heartbeat miss it, and the nodes look dead.
fn max_backoff(spec: &AgentSpec, record: &LabRecord) -> Duration {
    let control_plane = matches!(
        spec.name.as_str(),
        "apiserver" | "controller-manager" | "scheduler"
    ) && spec.kemu;
    if control_plane {
        let grace = record.topology.control_plane.node_monitor_grace_period;
        (grace / 8).clamp(FIRST_BACKOFF, Duration::from_secs(2))
    } else {
        MAX_BACKOFF
    }
}

async fn supervise(dir: LabDir, record: LabRecord) -> anyhow::Result<()> {
    // Signals first: a SIGTERM during start-up must stop what was started so far.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let cgroup = LabCgroup::of(&record.topology.name);
    // What a supervisor that died left: agents to adopt, and records of the dead to drop.
    let previous: Vec<ProcessRecord> = ProcessRecord::all(&dir);
    for dead in previous.iter().filter(|p| !p.is_alive()) {
        dead.unregister(&dir);
    }
    let mut agents = Vec::new();
    for spec in agent_specs(&record.topology, &dir, record.pod_id_range) {
        let ns = NetNs::open(&spec.namespace)?;
        let log = dir
            .logs()
            .join(&spec.host)
            .join(format!("{}.log", spec.name));
        dir.owner.create_dir_all(log.parent().expect("log dir"))?;
        let cgroup = match &cgroup {
            Some(cg) => Some(cg.open_procs(&cg.host(&spec.host))?),
            None => None,
        };
        let status = AgentStatus {
            host: spec.host.clone(),
            name: spec.name.clone(),
            command: spec.command_line(),
            pid: None,
            state: "stopped".into(),
            restarts: 0,
            last_exit: None,
            started: None,
            adopted: false,
        };
        let max_backoff = max_backoff(&spec, &record);
        agents.push(Agent {
            spec,
            ns,
            cgroup,
            log,
            status,
            record: None,
            backoff: FIRST_BACKOFF,
            max_backoff,
        });
    }
    let mut state = SupervisorState {
        pid: std::process::id() as i32,
        phase: "starting".into(),
        total: agents.len(),
        since: now(),
        ..Default::default()
    };
    write_state(&dir, &state)?;

    // kubectl on the machine itself reaches the API server through https://127.0.0.1:<port>,
    // with the lab's client certificate. A restarted supervisor takes the same port again when
    // it can, so that the kubeconfigs handed out keep working.
    if record.topology.hosts.iter().any(|h| h.is_master()) {
        let master = record.topology.master();
        let ns = std::sync::Arc::new(NetNs::open(&record.topology.host_namespace(master))?);
        let tls = super::forward::server_config(&super::pki::LabPki::load(&dir)?)?;
        let listener = match record.api_port {
            Some(port) => match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("port {port} is taken ({e}); serving the API on a new one");
                    tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?
                }
            },
            None => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
        };
        let port = listener.local_addr()?.port();
        dir.owner
            .write_atomic(&dir.api_port(), port.to_string().as_bytes())?;
        let target = std::net::SocketAddr::from((master.ip, super::forward::API_PORT));
        tokio::spawn(super::forward::serve(listener, ns, target, tls));
    }

    // Each agent is watched by its own task; exits come back here by index.
    let (exited, mut exits) = mpsc::unbounded_channel::<(usize, String, Duration)>();
    let mut last_progress = Instant::now();
    for (i, agent) in agents.iter_mut().enumerate() {
        if let Some(old) = previous.iter().find(|p| p.what == agent.spec.id())
            && let Some(pidfd) = adoptable(old)
        {
            adopt(agent, old.clone(), pidfd, i, exited.clone())?;
            state.adopted += 1;
        } else {
            start(&dir, &record, agent, i, exited.clone())?;
        }
        state.agents += 1;
        if last_progress.elapsed() > Duration::from_millis(100) {
            write_state(&dir, &state)?;
            last_progress = Instant::now();
        }
    }
    publish(&dir, &agents)?;
    state.phase = "running".into();
    write_state(&dir, &state)?;

    let (restart, mut restarts) = mpsc::unbounded_channel::<usize>();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some((i, how, ran)) = exits.recv() => {
                let agent = &mut agents[i];
                if let Some(r) = agent.record.take() {
                    r.unregister(&dir);
                }
                tracing::warn!(agent = %agent.spec.id(), %how, "agent exited; restarting");
                agent.status.last_exit = Some(how);
                agent.status.pid = None;
                agent.status.adopted = false;
                agent.status.state = "backoff".into();
                if ran >= HEALTHY_RUN {
                    agent.backoff = FIRST_BACKOFF;
                }
                let delay = agent.backoff;
                agent.backoff = (agent.backoff * 2).min(agent.max_backoff);
                publish(&dir, &agents)?;
                let restart = restart.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = restart.send(i);
                });
            }
            Some(i) = restarts.recv() => {
                let agent = &mut agents[i];
                agent.status.restarts += 1;
                if let Err(e) = start(&dir, &record, agent, i, exited.clone()) {
                    tracing::error!(agent = %agent.spec.id(), "restart failed: {e:#}");
                    let _ = exited.send((i, format!("failed to start: {e:#}"), Duration::ZERO));
                }
                publish(&dir, &agents)?;
            }
        }
    }

    // Stop every agent: SIGTERM, grace, SIGKILL.
    let records: Vec<ProcessRecord> = agents.iter().filter_map(|a| a.record.clone()).collect();
    let mut errors = Vec::new();
    super::teardown::stop_processes(&records, super::teardown::STOP_GRACE, &mut errors);
    for r in &records {
        r.unregister(&dir);
    }
    for agent in &mut agents {
        agent.status.state = "stopped".into();
        agent.status.pid = None;
    }
    publish(&dir, &agents)?;
    if let Some(me) = ProcessRecord::of(std::process::id() as i32, "supervisor") {
        me.unregister(&dir);
    }
    Ok(())
}

fn write_state(dir: &LabDir, state: &SupervisorState) -> anyhow::Result<()> {
    dir.owner.write_atomic(
        &dir.supervisor_json(),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    Ok(())
}

/// A pidfd on a recorded agent that is still the same process, or `None` (dead, or its PID
/// recycled). Checked again after opening: the pidfd then surely refers to our process.
fn adoptable(record: &ProcessRecord) -> Option<OwnedFd> {
    if !record.is_alive() {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, record.pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    record.is_alive().then_some(fd)
}

/// Take over a running agent of a dead supervisor: watch it until it exits, then restart it
/// like any other.
fn adopt(
    agent: &mut Agent,
    record: ProcessRecord,
    pidfd: OwnedFd,
    index: usize,
    exited: mpsc::UnboundedSender<(usize, String, Duration)>,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the pidfd, which stays open (and is deregistered before it is
    // closed) for as long as it is registered.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watch pid {}: {e}", record.pid))?;
    agent.status.pid = Some(record.pid);
    agent.status.state = "running".into();
    agent.status.started = Some(now());
    agent.status.adopted = true;
    agent.record = Some(record);
    tokio::spawn(async move {
        let started = Instant::now();
        // A pidfd becomes readable when its process exits.
        let _ = fd.readable().await;
        let how = "exited (adopted after a supervisor restart: exit status unknown)".to_string();
        let _ = exited.send((index, how, started.elapsed()));
    });
    Ok(())
}

/// Start one agent inside its namespace and cgroup, and watch it.
fn start(
    dir: &LabDir,
    record: &LabRecord,
    agent: &mut Agent,
    index: usize,
    exited: mpsc::UnboundedSender<(usize, String, Duration)>,
) -> anyhow::Result<()> {
    let (program, args) = agent.spec.program(&record.binary);
    let mut cmd = Command::new(program);
    cmd.args(args);
    let log = dir.owner.open_append(&agent.log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("KEMU_LAB", record.topology.name.as_str())
        .env("KEMU_HOST", &agent.spec.host)
        .env(KEMU_BINARY, &record.binary)
        .kill_on_drop(false);
    let fd = agent.ns.as_raw_fd();
    let procs = agent.cgroup.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: write and setns are async-signal-safe; both fds stay open in the parent until
    // spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = procs {
                super::cgroup::join_before_exec(procs)?;
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child: Child = cmd
        .spawn()
        .with_context(|| format!("start {}", agent.spec.command_line()))?;
    let pid = child.id().map(|p| p as i32).context("agent has no pid")?;
    let process = ProcessRecord::of(pid, agent.spec.id());
    if let Some(p) = &process
        && let Err(e) = p.register(dir)
    {
        // Where there is no cgroup, `down` finds agents only by their registration: one it
        // cannot find must not live.
        let _ = child.start_kill();
        return Err(anyhow::Error::from(e).context(format!("register {}", agent.spec.id())));
    }
    agent.record = process;
    agent.status.pid = Some(pid);
    agent.status.state = "running".into();
    agent.status.started = Some(now());
    tokio::spawn(watch(child, index, exited));
    Ok(())
}

async fn watch(
    mut child: Child,
    index: usize,
    exited: mpsc::UnboundedSender<(usize, String, Duration)>,
) {
    let started = std::time::Instant::now();
    let how = match child.wait().await {
        Ok(status) => match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    };
    let _ = exited.send((index, how, started.elapsed()));
}

fn publish(dir: &LabDir, agents: &[Agent]) -> anyhow::Result<()> {
    let status: Vec<&AgentStatus> = agents.iter().map(|a| &a.status).collect();
    dir.owner.write_atomic(
        &dir.agents_json(),
        serde_json::to_string_pretty(&status)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_comes_back_well_within_the_node_grace_period() {
        let mut topo = crate::topology::parse(
            "seed.yaml",
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/seed.yaml"))
                .unwrap(),
        )
        .unwrap();
        for (grace, want) in [
            (Duration::from_secs(8), Duration::from_secs(1)),
            (Duration::from_secs(40), Duration::from_secs(2)),
            (Duration::from_millis(400), FIRST_BACKOFF),
        ] {
            topo.control_plane.node_monitor_grace_period = grace;
            let dir = LabDir::at("/run/kemu/seed").unwrap();
            let record = LabRecord {
                topology: topo.clone(),
                source: None,
                binary: "/bin/kemu".into(),
                created: 0,
                api_port: None,
                kubeconfig: None,
                previous_context: None,
                last_repair: None,
                repairs: 0,
                pod_id_range: None,
            };
            for spec in agent_specs(&topo, &dir, None) {
                let max = max_backoff(&spec, &record);
                if ["apiserver", "controller-manager", "scheduler"].contains(&spec.name.as_str()) {
                    assert_eq!(max, want, "{} with grace {grace:?}", spec.name);
                    assert!(max * 4 <= grace.max(FIRST_BACKOFF * 4));
                } else {
                    assert_eq!(max, MAX_BACKOFF, "{}", spec.name);
                }
            }
        }
    }
}
