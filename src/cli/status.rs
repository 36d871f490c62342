//! `kemu status [LAB]`: hosts, roles, underlay IPs, pod subnets, each host's live proxy mode,
//! agents and their health. The table and `-o json` are made from one [`StatusView`], so the
//! JSON carries everything the table shows.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::output::Format;
use crate::lab::state::{LabDir, LabRecord, ProcessRecord, Repair};
use crate::lab::supervisor::{AgentStatus, read_status};
use crate::netns;
use crate::proxy::ProxyMode;
use crate::proxy::agent::control::{ProxyStatus, parse_mode};

/// Show a lab's hosts and agents.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lab name; may be omitted when exactly one lab exists.
    pub lab: Option<crate::topology::LabName>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Everything `status` shows about a lab.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub lab: String,
    pub source: Option<std::path::PathBuf>,
    pub backend: String,
    pub service_cidr: String,
    pub cluster_network: String,
    pub api: Option<ApiView>,
    pub supervisor: Option<SupervisorView>,
    pub hosts: Vec<HostView>,
    pub agents: Vec<AgentView>,
    /// The faults in force (`kemu link`, `partition`, `node stop`), removed by `kemu heal`.
    pub faults: crate::faults::state::FaultState,
}

/// Where the lab's API server answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiView {
    /// Inside the lab (the 2015 insecure port on the master).
    pub inside: String,
    /// From this machine, with the lab's client certificate.
    pub local: String,
    pub kubeconfig: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorView {
    pub pid: i32,
    pub alive: bool,
    pub repairs: u32,
    pub last_repair: Option<Repair>,
    /// Seconds since the last repair, when there was one.
    pub last_repair_ago: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub roles: Vec<crate::topology::Role>,
    /// The ROLES column (`ai`, `i`, `client` ...).
    pub role_label: String,
    pub segment: String,
    pub pod_subnet: Option<ipnet::Ipv4Net>,
    /// `None` for hosts that run no service proxy (clients).
    pub proxy: Option<ProxyView>,
    pub namespace: String,
    pub namespace_exists: bool,
}

/// A host's service proxy mode, live: what the topology said, what `kemu proxy mode` asked
/// for last, and what the agent's last sync put into the kernel.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    pub configured: ProxyMode,
    pub requested: Option<ProxyMode>,
    pub applied: Option<ProxyMode>,
    /// The PROXY column: the applied mode, `old->new` while a switch is under way.
    pub shown: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(flatten)]
    pub status: AgentStatus,
    /// The STATE column: the supervisor's state, `dead` when its process is gone, `adopted`
    /// when a repaired supervisor took it over.
    pub shown_state: String,
}

impl ProxyView {
    fn new(
        configured: ProxyMode,
        requested: Option<ProxyMode>,
        applied: Option<ProxyMode>,
    ) -> Self {
        let want = requested.unwrap_or(configured);
        let shown = match applied {
            Some(now) if now == want => now.to_string(),
            Some(now) => format!("{now}->{want}"),
            None => want.to_string(),
        };
        ProxyView {
            configured,
            requested,
            applied,
            shown,
        }
    }
}

/// The STATE column of an agent.
pub(crate) fn shown_state(a: &AgentStatus, live: &[ProcessRecord]) -> String {
    let alive = a
        .pid
        .is_some_and(|pid| live.iter().any(|p| p.pid == pid && p.is_alive()));
    if a.state == "running" && !alive {
        "dead".into()
    } else if a.adopted {
        "adopted".into()
    } else {
        a.state.clone()
    }
}

/// Gather what `status` shows from the lab's state directory and the kernel.
pub fn gather(dir: &LabDir, record: &LabRecord) -> StatusView {
    let topo = &record.topology;
    let processes = ProcessRecord::all(dir);
    let supervisor = crate::lab::supervisor::alive(dir)
        .or_else(|| processes.iter().find(|p| p.what == "supervisor").cloned());
    let hosts = topo
        .hosts
        .iter()
        .map(|h| {
            let namespace = topo.host_namespace(h);
            let proxy = (!h.is_client()).then(|| {
                let mode_file = dir.proxy_mode_file(&h.name);
                let status_file = dir.proxy_status_file(&h.name);
                // Read through the guard: never a file some link in the state points at.
                let requested = dir
                    .owner
                    .read_to_string(&mode_file)
                    .ok()
                    .and_then(|t| parse_mode(&t));
                let applied = dir
                    .owner
                    .read_to_string(&status_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<ProxyStatus>(&t).ok())
                    .and_then(|s| s.mode);
                ProxyView::new(h.proxy_mode, requested, applied)
            });
            HostView {
                name: h.name.clone(),
                ip: h.ip,
                roles: h.roles.clone(),
                role_label: h.role_label(),
                segment: h.segment.clone(),
                pod_subnet: h.subnet,
                proxy,
                namespace_exists: netns::exists(&namespace),
                namespace,
            }
        })
        .collect();
    let agents = read_status(dir)
        .into_iter()
        .map(|a| AgentView {
            shown_state: shown_state(&a, &processes),
            status: a,
        })
        .collect();
    let faults = crate::faults::state::FaultState::load(dir).unwrap_or_else(|e| {
        eprintln!("warning: the lab's faults cannot be read: {e:#}");
        Default::default()
    });
    StatusView {
        faults,
        lab: topo.name.to_string(),
        source: record.source.clone(),
        backend: topo.cluster_network.backend.to_string(),
        service_cidr: topo.service_cidr.to_string(),
        cluster_network: topo.cluster_network.network.to_string(),
        api: record.api_port.map(|port| ApiView {
            inside: format!(
                "http://{}:{}",
                topo.master().ip,
                crate::lab::forward::API_PORT
            ),
            local: format!("https://127.0.0.1:{port}"),
            kubeconfig: dir.kubeconfig(),
        }),
        supervisor: supervisor.map(|s| SupervisorView {
            pid: s.pid,
            alive: s.is_alive(),
            repairs: record.repairs,
            last_repair: record.last_repair.clone(),
            last_repair_ago: record
                .last_repair
                .as_ref()
                .map(|r| super::output::now().saturating_sub(r.at)),
        }),
        hosts,
        agents,
    }
}

/// The table.
pub fn render_table(v: &StatusView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {}{}  backend {}  services {}  cluster network {}",
        v.lab,
        v.source
            .as_ref()
            .map(|s| format!(" ({})", s.display()))
            .unwrap_or_default(),
        v.backend,
        v.service_cidr,
        v.cluster_network,
    );
    if let Some(api) = &v.api {
        let _ = writeln!(
            out,
            "API server: {} inside the lab; {} from this machine (client certificate in {})",
            api.inside,
            api.local,
            api.kubeconfig.display()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<14} {:<15} {:<8} {:<16} {:<10} NAMESPACE",
        "HOST", "ROLES", "IP", "SEGMENT", "POD SUBNET", "PROXY"
    );
    for h in &v.hosts {
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:<15} {:<8} {:<16} {:<10} {}{}",
            h.name,
            h.role_label,
            h.ip,
            h.segment,
            h.pod_subnet
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            h.proxy.as_ref().map(|p| p.shown.as_str()).unwrap_or("-"),
            h.namespace,
            if h.namespace_exists {
                ""
            } else {
                " (missing!)"
            }
        );
    }
    if !(v.agents.is_empty() && v.supervisor.is_none()) {
        render_agents(&mut out, v);
    }
    let faults = v.faults.describe();
    if !faults.is_empty() {
        let _ = writeln!(out, "\nfaults (`kemu heal {}` removes them all):", v.lab);
        for line in faults {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The supervisor and agents part of the table (a network-only lab has none).
fn render_agents(out: &mut String, v: &StatusView) {
    use std::fmt::Write as _;
    let _ = writeln!(out);
    match &v.supervisor {
        Some(s) if s.alive => {
            let _ = writeln!(out, "supervisor: pid {} running", s.pid);
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "supervisor: pid {} NOT RUNNING: agents are not restarted and the API endpoint is down; `kemu repair {}` starts a new one",
                s.pid, v.lab
            );
        }
        None => {
            let _ = writeln!(
                out,
                "supervisor: not running; `kemu repair {}` starts one",
                v.lab
            );
        }
    }
    if let Some(s) = &v.supervisor
        && let Some(r) = &s.last_repair
    {
        let _ = writeln!(
            out,
            "  restarted by kemu repair {} time(s); the last {} s ago found the supervisor{} dead, adopted {} agents and started {} again",
            s.repairs,
            s.last_repair_ago.unwrap_or(0),
            r.dead_pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default(),
            r.adopted,
            r.restarted
        );
    }
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:<8} {:<9} {:<9} LAST EXIT",
        "HOST", "AGENT", "PID", "STATE", "RESTARTS"
    );
    for a in &v.agents {
        let s = &a.status;
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:<8} {:<9} {:<9} {}",
            s.host,
            s.name,
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            a.shown_state,
            s.restarts,
            s.last_exit.as_deref().unwrap_or("-")
        );
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.lab.is_none() && crate::lab::list_labs().is_empty() {
        println!("no labs are up (start one with `kemu up topologies/seed.yaml`)");
        return Ok(ExitCode::SUCCESS);
    }
    let lab = super::pick_lab(args.lab.as_ref())?;
    let (dir, record) = LabRecord::open(&lab)?;
    let view = gather(&dir, &record);
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
        Format::Table => print!("{}", render_table(&view)),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_column_shows_the_mode_in_the_kernel_and_a_switch_under_way() {
        use ProxyMode::*;
        // Before the agent's first sync: what it was asked to run.
        assert_eq!(ProxyView::new(Userspace, None, None).shown, "userspace");
        assert_eq!(
            ProxyView::new(Userspace, Some(Iptables), None).shown,
            "iptables"
        );
        // After `kemu proxy mode`: the new mode once the agent applied it, not the topology's.
        assert_eq!(
            ProxyView::new(Userspace, Some(Iptables), Some(Iptables)).shown,
            "iptables"
        );
        assert_eq!(
            ProxyView::new(Userspace, Some(Nftables), Some(Iptables)).shown,
            "iptables->nftables"
        );
    }
}
