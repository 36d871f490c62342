//! `kemu repair`: bring back a lab whose supervisor died. The agents and pods it started are
//! still running, unsupervised, and the HTTPS endpoint in every kubeconfig answers no more. A
//! new supervisor adopts the agents that are alive, starts those that are not, and serves the
//! endpoint again (on the same port when it is free; otherwise the kubeconfigs are rewritten).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::kubeconfig::{self, Credentials};
use super::pki::LabPki;
use super::state::{LabDir, LabRecord, ProcessRecord, Repair};
use super::supervisor;

/// What `repair` found.
#[derive(Debug)]
pub enum Outcome {
    /// The supervisor runs: nothing to do.
    Running { pid: i32 },
    /// A lab built with `--network-only` has no supervisor to repair.
    NoSupervisor,
    /// A new supervisor runs.
    Repaired {
        pid: i32,
        repair: Repair,
        total: usize,
        api_port: Option<u16>,
    },
}

/// Repair the lab in `dir` if its supervisor is dead.
pub fn repair(dir: &LabDir, record: &mut LabRecord) -> anyhow::Result<Outcome> {
    super::check_privileges()?;
    if let Some(running) = supervisor::alive(dir) {
        return Ok(Outcome::Running { pid: running.pid });
    }
    if record.api_port.is_none() && !dir.pki().exists() {
        return Ok(Outcome::NoSupervisor);
    }
    let dead_pid = ProcessRecord::all(dir)
        .into_iter()
        .find(|p| p.what == "supervisor")
        .map(|p| p.pid);
    let pid = supervisor::launch(dir, record).context("start a new supervisor")?;
    let state = supervisor::read_state(dir).unwrap_or_default();
    let repair = Repair {
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        dead_pid,
        adopted: state.adopted,
        restarted: state.total.saturating_sub(state.adopted),
    };
    // The endpoint's port: the same one if it was free; if not, every kubeconfig learns the
    // new one.
    let port = dir.read_api_port();
    if let Some(port) = port
        && record.api_port != Some(port)
    {
        let pki = LabPki::load(dir)?;
        let creds = Credentials {
            server: format!("https://127.0.0.1:{port}"),
            pki: &pki,
        };
        kubeconfig::write_standalone(dir, &record.topology.name, &creds)?;
        if let Some(path) = &record.kubeconfig {
            kubeconfig::refresh(path, &record.topology.name, &creds)?;
        }
        record.api_port = Some(port);
    }
    record.repairs += 1;
    record.last_repair = Some(repair.clone());
    record.save(dir).context("write lab.json")?;
    Ok(Outcome::Repaired {
        pid,
        repair,
        total: state.total,
        api_port: port,
    })
}
