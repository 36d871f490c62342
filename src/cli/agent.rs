//! `kemu agent kill|restart LAB HOST AGENT`: crash or restart one agent of a host. Either
//! way the lab's supervisor starts it again, as systemd restarts a crashed kubelet: `kill`
//! is a crash (SIGKILL, restarted after the supervisor's back-off), `restart` a clean stop
//! (SIGTERM). To keep a host's agents down, stop the node (`kemu node stop`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::state::{LabRecord, ProcessRecord};
use crate::lab::supervisor::read_status;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AgentAction {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM, and wait until the supervisor has started it again.
    Restart,
}

/// Crash or restart an agent (apiserver, kubelet, proxy, flanneld, ...).
#[derive(Debug, Args)]
pub struct AgentArgs {
    pub action: AgentAction,
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Host name or underlay IP.
    pub host: String,
    /// Agent name, as `kemu status` lists it.
    pub agent: String,
}

/// How long `restart` waits for the supervisor to start the agent again.
const RESTART_WAIT: Duration = Duration::from_secs(30);

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let host = record.host(&args.host)?.name.clone();
    let agents = read_status(&dir);
    let Some(agent) = agents
        .iter()
        .find(|a| a.host == host && a.name == args.agent)
    else {
        let names: Vec<&str> = agents
            .iter()
            .filter(|a| a.host == host)
            .map(|a| a.name.as_str())
            .collect();
        anyhow::bail!(
            "host {host} has no agent {:?}; its agents: {}",
            args.agent,
            names.join(", ")
        );
    };
    // Signal only a process kemu recorded, and only if it is still that process.
    let process = agent
        .pid
        .and_then(|pid| {
            ProcessRecord::all(&dir)
                .into_iter()
                .find(|p| p.pid == pid && p.is_alive())
        })
        .ok_or_else(|| anyhow::anyhow!("{host}/{} is not running", agent.name))?;
    let signal = match args.action {
        AgentAction::Kill => Signal::SIGKILL,
        AgentAction::Restart => Signal::SIGTERM,
    };
    kill(Pid::from_raw(process.pid), signal)?;
    let verb = match args.action {
        AgentAction::Kill => "killed",
        AgentAction::Restart => "restarted",
    };
    crate::faults::history::append(
        &dir,
        &[(
            crate::faults::history::Action::Done,
            format!("agent {host}/{}: {verb}", agent.name),
        )],
    )?;
    match args.action {
        AgentAction::Kill => {
            println!(
                "{host}/{}: killed pid {} (the supervisor restarts it after its back-off)",
                agent.name, process.pid
            );
        }
        AgentAction::Restart => {
            let deadline = Instant::now() + RESTART_WAIT;
            let new_pid = loop {
                let now = read_status(&dir);
                if let Some(pid) = now
                    .iter()
                    .find(|a| a.host == host && a.name == agent.name)
                    .filter(|a| a.state == "running")
                    .and_then(|a| a.pid)
                    .filter(|pid| *pid != process.pid)
                {
                    break pid;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{host}/{} did not come back within {RESTART_WAIT:?} (see `kemu status`)",
                    agent.name
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            println!(
                "{host}/{}: restarted (pid {} -> {new_pid})",
                agent.name, process.pid
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
