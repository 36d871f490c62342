//! `kemu status [LAB]`: hosts, roles, underlay IPs, pod subnets, agents and their health.

use std::process::ExitCode;

use clap::Args;

use crate::lab::state::{LabRecord, ProcessRecord};
use crate::lab::supervisor::read_status;
use crate::netns;

/// Show a lab's hosts and agents.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lab name; may be omitted when exactly one lab exists.
    pub lab: Option<crate::topology::LabName>,
    /// Output format: `table` or `json`.
    #[arg(long, short, default_value = "table")]
    pub output: String,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.lab.is_none() && crate::lab::list_labs().is_empty() {
        println!("no labs are up (start one with `kemu up topologies/seed.yaml`)");
        return Ok(ExitCode::SUCCESS);
    }
    let lab = super::pick_lab(args.lab.as_ref(), false)?;
    let (dir, record) = LabRecord::open(&lab)?;
    let topo = &record.topology;
    let agents = read_status(&dir);
    let supervisor = crate::lab::supervisor::alive(&dir).or_else(|| {
        ProcessRecord::all(&dir)
            .into_iter()
            .find(|p| p.what == "supervisor")
    });
    let faults = crate::faults::state::FaultState::load(&dir)?;
    if args.output == "json" {
        let value = serde_json::json!({
            "lab": topo.name,
            "source": record.source,
            "supervisor": supervisor.as_ref().map(|s| serde_json::json!({
                "pid": s.pid, "alive": s.is_alive(),
                "repairs": record.repairs, "lastRepair": record.last_repair,
            })),
            "hosts": topo.hosts.iter().map(|h| serde_json::json!({
                "name": h.name, "ip": h.ip, "roles": h.roles, "segment": h.segment,
                "podSubnet": h.subnet, "namespace": topo.host_namespace(h),
                "namespaceExists": netns::exists(&topo.host_namespace(h)),
            })).collect::<Vec<_>>(),
            "agents": agents,
            "faults": faults,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "lab {}{}  backend {}  services {}  cluster network {}",
        topo.name,
        record
            .source
            .as_ref()
            .map(|s| format!(" ({})", s.display()))
            .unwrap_or_default(),
        topo.cluster_network.backend,
        topo.service_cidr,
        topo.cluster_network.network,
    );
    if let Some(port) = record.api_port {
        println!(
            "API server: http://{}:8080 inside the lab; https://127.0.0.1:{port} from this machine (client certificate in {})",
            topo.master().ip,
            dir.kubeconfig().display()
        );
    }
    println!();
    println!(
        "{:<16} {:<14} {:<15} {:<8} {:<16} {:<10} NAMESPACE",
        "HOST", "ROLES", "IP", "SEGMENT", "POD SUBNET", "PROXY"
    );
    for h in &topo.hosts {
        let ns = topo.host_namespace(h);
        println!(
            "{:<16} {:<14} {:<15} {:<8} {:<16} {:<10} {}{}",
            h.name,
            h.role_label(),
            h.ip,
            h.segment,
            h.subnet
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            if h.is_client() {
                "-".to_string()
            } else {
                h.proxy_mode.to_string()
            },
            ns,
            if netns::exists(&ns) {
                ""
            } else {
                " (missing!)"
            }
        );
    }
    if !agents.is_empty() || supervisor.is_some() {
        println!();
        match &supervisor {
            Some(s) if s.is_alive() => println!("supervisor: pid {} running", s.pid),
            Some(s) => println!(
                "supervisor: pid {} NOT RUNNING: agents are not restarted and the API endpoint is down; `kemu repair {}` starts a new one",
                s.pid, topo.name
            ),
            None => println!(
                "supervisor: not running; `kemu repair {}` starts one",
                topo.name
            ),
        }
        if let Some(r) = &record.last_repair {
            let ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().saturating_sub(r.at))
                .unwrap_or(0);
            println!(
                "  restarted by kemu repair {} time(s); the last {ago} s ago found the supervisor{} dead, adopted {} agents and started {} again",
                record.repairs,
                r.dead_pid
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                r.adopted,
                r.restarted
            );
        }
        println!(
            "{:<16} {:<20} {:<8} {:<9} {:<9} LAST EXIT",
            "HOST", "AGENT", "PID", "STATE", "RESTARTS"
        );
        for a in &agents {
            let alive = a.pid.is_some_and(|pid| {
                ProcessRecord::all(&dir)
                    .iter()
                    .any(|p| p.pid == pid && p.is_alive())
            });
            let state = if a.state == "running" && !alive {
                "dead"
            } else if a.adopted {
                "adopted"
            } else {
                a.state.as_str()
            };
            println!(
                "{:<16} {:<20} {:<8} {:<9} {:<9} {}",
                a.host,
                a.name,
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                state,
                a.restarts,
                a.last_exit.as_deref().unwrap_or("-")
            );
        }
    }
    let lines = faults.describe();
    if !lines.is_empty() {
        println!();
        println!("faults (`kemu heal {}` removes them all):", topo.name);
        for line in lines {
            println!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
