//! The per-lab supervisor (`kemu supervise LAB`), a small daemon in the root namespace that
//! `kemu up` starts and `kemu down` stops. It starts every agent inside its host's namespace,
//! records their PIDs (so `down` can stop them even if the supervisor itself was killed),
//! restarts them when they exit (with back-off, like a kubelet restarting containers), and
//! publishes their state in `agents.json` for `kemu status`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::agents::{AgentSpec, KEMU_BINARY, agent_specs};
use super::state::{LabDir, LabRecord, ProcessRecord, write_atomic};
use crate::netns::NetNs;

/// First restart delay; doubles up to `MAX_BACKOFF` and resets after a long healthy run.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

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

struct Agent {
    spec: AgentSpec,
    ns: NetNs,
    log: PathBuf,
    status: AgentStatus,
    record: Option<ProcessRecord>,
    backoff: Duration,
}

/// Run the supervisor of `lab` until SIGTERM/SIGINT. Blocks.
pub fn run(lab: &str) -> anyhow::Result<()> {
    let dir = LabDir::new(lab);
    let record = LabRecord::load(&dir)?;
    if let Some(me) = ProcessRecord::of(std::process::id() as i32, "supervisor") {
        me.register(&dir)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(supervise(dir, record))
}

async fn supervise(dir: LabDir, record: LabRecord) -> anyhow::Result<()> {
    let mut agents = Vec::new();
    for spec in agent_specs(&record.topology, &dir, record.pod_id_range) {
        let ns = NetNs::open(&spec.namespace)?;
        let log = dir
            .logs()
            .join(&spec.host)
            .join(format!("{}.log", spec.name));
        std::fs::create_dir_all(log.parent().expect("log dir"))?;
        let status = AgentStatus {
            host: spec.host.clone(),
            name: spec.name.clone(),
            command: spec.command_line(),
            pid: None,
            state: "stopped".into(),
            restarts: 0,
            last_exit: None,
            started: None,
        };
        agents.push(Agent {
            spec,
            ns,
            log,
            status,
            record: None,
            backoff: FIRST_BACKOFF,
        });
    }

    // kubectl on the machine itself reaches the API server through 127.0.0.1:<port>.
    if record.topology.hosts.iter().any(|h| h.is_master()) {
        let master = record.topology.master();
        let ns = std::sync::Arc::new(NetNs::open(&record.topology.host_namespace(master))?);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        write_atomic(&dir.api_port(), port.to_string().as_bytes())?;
        let target = std::net::SocketAddr::from((master.ip, super::forward::API_PORT));
        tokio::spawn(super::forward::serve(listener, ns, target));
    }

    // Each child is awaited by its own task; exits come back here by index.
    let (exited, mut exits) = mpsc::unbounded_channel::<(usize, String, Duration)>();
    for (i, agent) in agents.iter_mut().enumerate() {
        start(&dir, &record, agent, i, exited.clone())?;
    }
    publish(&dir, &agents)?;

    let (restart, mut restarts) = mpsc::unbounded_channel::<usize>();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
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
                agent.status.state = "backoff".into();
                if ran >= HEALTHY_RUN {
                    agent.backoff = FIRST_BACKOFF;
                }
                let delay = agent.backoff;
                agent.backoff = (agent.backoff * 2).min(MAX_BACKOFF);
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

/// Start one agent inside its namespace and watch it.
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
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&agent.log)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("KEMU_LAB", &record.topology.name)
        .env("KEMU_HOST", &agent.spec.host)
        .env(KEMU_BINARY, &record.binary)
        .kill_on_drop(false);
    let fd = agent.ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
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
        // `down` finds agents only by their registration: one it cannot find must not live.
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
    write_atomic(
        &dir.agents_json(),
        serde_json::to_string_pretty(&status)?.as_bytes(),
    )?;
    Ok(())
}
