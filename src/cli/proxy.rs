//! `kemu proxy`: the service proxy.
//!
//! - `kemu proxy --master URL --node-name NAME --node-ip IP …` runs the per-node agent
//!   ([`crate::proxy::agent`]); the lab supervisor starts one in every minion's namespace.
//! - `kemu proxy render` prints the rules a node's proxy would apply for a set of Services and
//!   EndpointSlices, exactly as fed to `iptables-restore` / `nft -f`.
//! - `kemu proxy mode LAB MODE [--host HOST]` switches the proxies of a running lab: it writes
//!   their mode files, sends the recorded agent PIDs SIGHUP and waits until each has applied
//!   the new mode.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use ipnet::IpNet;

use crate::lab::state::{LabRecord, ProcessRecord};
use crate::proxy::agent::{self, control};
use crate::proxy::profile::{KubeVersion, ProxyProfile};
use crate::proxy::userspace::ProxyPortAllocator;
use crate::proxy::{NodeContext, ProxyInput, ProxyMode, objects, render};

/// The service proxy: without a subcommand, run the per-node agent.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print the rules the proxy would apply for the objects in a YAML file.
    Render(RenderArgs),
    /// Switch the proxy mode of a running lab's nodes.
    Mode(ModeArgs),
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::topology::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 100ms, 30s or 1m"))
}

/// The agent's flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// API server URL, e.g. http://192.168.0.201:8080.
    #[arg(long, required = true)]
    pub master: Option<String>,
    /// This node's name (decides which endpoints are local).
    #[arg(long, required = true)]
    pub node_name: Option<String>,
    /// This node's IP address (userspace DNAT target, NodePort address).
    #[arg(long, required = true)]
    pub node_ip: Option<IpAddr>,
    /// Pod network CIDR: traffic from outside it to a ClusterIP is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<IpNet>,
    /// Service CIDR; repeatable.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// File holding the mode; re-read on SIGHUP and every 2 s. Wins over --mode.
    #[arg(long)]
    pub mode_file: Option<PathBuf>,
    /// The mode when there is no mode file.
    #[arg(long, value_enum)]
    pub mode: Option<ProxyMode>,
    /// Where to write the agent's status after every sync (JSON).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Seed of the proxy-port allocator and endpoint shuffles (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Minimum time between two syncs; changes in between are coalesced.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub min_sync_period: Duration,
    /// Time between periodic full syncs when nothing changes.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub sync_period: Duration,
    /// Behave as this kube-proxy release (e.g. 1.31): conntrack cleanup, default mode,
    /// nfacct counters, what a mode switch leaves, partial sync output. Without it, kemu's
    /// own profile (the newest behaviour, clean mode switches, fast partial syncs).
    #[arg(long, value_name = "VERSION")]
    pub kube_proxy_version: Option<KubeVersion>,
    /// Serve NodePorts on 127.0.0.1 in iptables mode (`route_localnet=1`); the release's
    /// default (on) without it.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "BOOL")]
    pub iptables_localhost_nodeports: Option<bool>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "BOOL")]
    pub masquerade_all: Option<bool>,
    /// Health endpoint (`/healthz`, `/livez`) and health check node ports' address; empty
    /// to serve none.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// Metrics endpoint (`/metrics`, `/proxyMode`); empty to serve none.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
}

/// An optional listen address: empty means none.
fn bind_address(flag: &str, text: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("--{flag} {text:?} is not an address such as 0.0.0.0:10256"))
}

/// `kemu proxy mode`.
#[derive(Debug, Args)]
pub struct ModeArgs {
    /// The lab.
    pub lab: crate::topology::LabName,
    /// The new mode.
    #[arg(value_enum)]
    pub mode: ProxyMode,
    /// Only this host (default: every minion).
    #[arg(long)]
    pub host: Option<String>,
    /// Return once the mode files are written and the agents signalled.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the agents to apply the new mode.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub timeout: Duration,
}

/// Default seed of the userspace proxy-port allocator, so renders are reproducible.
pub const DEFAULT_SEED: u64 = 2015;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Proxy mode whose rules to print.
    #[arg(long, value_enum)]
    pub mode: ProxyMode,
    /// Name of the node (decides which endpoints are local).
    #[arg(long)]
    pub node_name: String,
    /// The node's IP address; repeat for more (the first is the primary).
    #[arg(long = "node-ip", required = true)]
    pub node_ips: Vec<IpAddr>,
    /// Pod network CIDR, used to tell pod traffic from other traffic.
    #[arg(long)]
    pub cluster_cidr: Option<IpNet>,
    /// Service CIDR (nftables drops traffic to unallocated ClusterIPs in it); repeatable.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// Mark every packet sent to a ClusterIP for masquerading.
    #[arg(long)]
    pub masquerade_all: bool,
    /// YAML file with Services and EndpointSlices (several documents and `kind: List` allowed).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Seed of the userspace proxy-port allocator.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// The objects before the change: print the partial sync kube-proxy writes for the
    /// change from this file to `-f` (its `iptables-restore` input, or its `nft -f`
    /// transaction).
    #[arg(long, value_name = "OLD.yaml")]
    pub previous: Option<PathBuf>,
    /// Render as this kube-proxy release (nfacct counters, localhost NodePorts).
    #[arg(long, value_name = "VERSION")]
    pub kube_proxy_version: Option<KubeVersion>,
}

/// Run `kemu proxy …`.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ProxyCommand::Render(render_args)) => {
            let (text, warnings) = render_file(&render_args)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Some(ProxyCommand::Mode(mode_args)) => switch_mode(&mode_args),
        None => run_agent(args.agent),
    }
}

/// Run the per-node agent until SIGTERM/SIGINT.
pub fn run_agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let profile = ProxyProfile::new(a.kube_proxy_version);
    let healthz_bind = bind_address("healthz-bind-address", &a.healthz_bind_address)?;
    let metrics_bind = bind_address("metrics-bind-address", &a.metrics_bind_address)?;
    agent::run(agent::Config {
        localhost_node_ports: a
            .iptables_localhost_nodeports
            .unwrap_or(profile.localhost_node_ports),
        masquerade_all: a.masquerade_all.unwrap_or(profile.masquerade_all),
        profile,
        healthz_bind,
        metrics_bind,
        master: a.master.context("--master is required")?,
        node_name: a.node_name.context("--node-name is required")?,
        node_ip: a.node_ip.context("--node-ip is required")?,
        cluster_cidr: a.cluster_cidr,
        service_cidrs: a.service_cidrs,
        mode: a.mode,
        mode_file: a.mode_file,
        status_file: a.status_file,
        seed: a.seed.unwrap_or_else(rand::random),
        min_sync_period: a.min_sync_period,
        sync_period: a.sync_period,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Write the mode files, signal the recorded proxy agents, wait for them.
fn switch_mode(args: &ModeArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let topo = &record.topology;
    let hosts: Vec<&crate::topology::Host> = match &args.host {
        Some(key) => {
            let host = record.host(key)?;
            anyhow::ensure!(
                host.is_minion(),
                "host {} is not a minion: it runs no service proxy",
                host.name
            );
            vec![host]
        }
        None => topo.minions().collect(),
    };
    let agents = crate::lab::supervisor::read_status(&dir);
    let records = ProcessRecord::all(&dir);
    let mut waiting: Vec<(&str, u32)> = Vec::new();
    for host in &hosts {
        control::write_mode(&dir.proxy_mode_file(&host.name), args.mode)
            .with_context(|| format!("write the mode file of {}", host.name))?;
        // Only a PID the lab recorded for this host's proxy, and only while it is that process.
        let id = format!("{}/proxy", host.name);
        let pid = agents
            .iter()
            .filter(|a| a.host == host.name && a.name == "proxy")
            .find_map(|a| a.pid)
            .filter(|pid| {
                records
                    .iter()
                    .any(|r| r.pid == *pid && r.what == id && r.is_alive())
            });
        match pid {
            Some(pid) => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .with_context(|| format!("signal the proxy of {} (pid {pid})", host.name))?;
                waiting.push((&host.name, pid as u32));
            }
            None => println!(
                "{}: no proxy running; it starts in {} mode",
                host.name, args.mode
            ),
        }
    }
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + args.timeout;
    for (host, pid) in waiting {
        let path = dir.proxy_status_file(host);
        loop {
            let status = control::ProxyStatus::read(&path);
            if let Some(s) = &status
                && s.pid == pid
                && s.mode == Some(args.mode)
            {
                println!("{host}: proxy mode {}", args.mode);
                break;
            }
            if Instant::now() > deadline {
                let error = status.and_then(|s| s.error).unwrap_or_default();
                anyhow::bail!(
                    "the proxy of {host} did not apply {} mode within {:?} {error}(see {})",
                    args.mode,
                    args.timeout,
                    dir.logs().join(host).join("proxy.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Read the objects of a file into the input of `args`' node.
fn read_input(
    args: &RenderArgs,
    file: &std::path::Path,
) -> anyhow::Result<(ProxyInput, Vec<String>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let objects = objects::parse_yaml(&text).with_context(|| format!("in {}", file.display()))?;
    let mut node = NodeContext::new(args.node_name.clone(), args.node_ips.clone());
    node.cluster_cidr = args.cluster_cidr;
    node.service_cidrs = args.service_cidrs.clone();
    node.masquerade_all = args.masquerade_all;
    if let Some(version) = args.kube_proxy_version {
        // The counters the release creates (a live agent uses those it could create).
        let profile = ProxyProfile::for_version(version);
        node.nfacct_invalid_drop = profile.nfacct_invalid_drop;
        node.nfacct_localhost = profile.nfacct_localhost;
    }
    let mut input = ProxyInput::from_objects(node, &objects.services, &objects.endpoint_slices);
    if args.mode == ProxyMode::Userspace {
        // Like the live agent: one proxy port per service port, in service order.
        let mut ports = ProxyPortAllocator::new(args.seed);
        input.proxy_ports = ports.allocate_all(input.services.iter().map(|s| &s.name));
    }
    Ok((input, objects.warnings))
}

/// Read the file and render it; returns the rules and the warnings about skipped objects.
/// With `--previous`, the partial sync kube-proxy writes for the change from that file:
/// the rules as they are after a full sync of the old objects, then the new ones written
/// as kube-proxy's next (partial) sync writes them.
pub fn render_file(args: &RenderArgs) -> anyhow::Result<(String, Vec<String>)> {
    let (mut input, mut warnings) = read_input(args, &args.file)?;
    let Some(previous) = &args.previous else {
        return Ok((render(args.mode, &input), warnings));
    };
    let (old, old_warnings) = read_input(args, previous)?;
    warnings.extend(old_warnings);
    match args.mode {
        ProxyMode::Iptables => {
            let applied = render(ProxyMode::Iptables, &old);
            input.existing_nat_chains =
                crate::proxy::agent::rules::chains_after_restore(&applied, "nat");
            input.changed_services = Some(ProxyInput::changed_services(&old, &input));
            Ok((render(ProxyMode::Iptables, &input), warnings))
        }
        ProxyMode::Nftables => {
            let changed = ProxyInput::changed_services(&old, &input);
            Ok((
                crate::proxy::nftables::kube_proxy_partial(
                    &render(ProxyMode::Nftables, &old),
                    &render(ProxyMode::Nftables, &input),
                    &changed,
                ),
                warnings,
            ))
        }
        ProxyMode::Userspace => anyhow::bail!(
            "--previous: the userspace proxier has no partial syncs (it re-ensures every portal rule)"
        ),
    }
}
