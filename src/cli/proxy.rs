//! `kemu proxy`: the service proxy. `kemu proxy render` prints the rules a node's proxy would
//! apply for a set of Services and EndpointSlices, exactly as fed to `iptables-restore` /
//! `nft -f`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ipnet::IpNet;

use crate::proxy::userspace::ProxyPortAllocator;
use crate::proxy::{NodeContext, ProxyInput, ProxyMode, objects, render};

/// Service proxy commands.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: ProxyCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print the rules the proxy would apply for the objects in a YAML file.
    Render(RenderArgs),
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
}

/// Run `kemu proxy …`.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ProxyCommand::Render(render_args) => {
            let (text, warnings) = render_file(&render_args)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read the file and render it; returns the rules and the warnings about skipped objects.
pub fn render_file(args: &RenderArgs) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let objects =
        objects::parse_yaml(&text).with_context(|| format!("in {}", args.file.display()))?;
    let mut node = NodeContext::new(args.node_name.clone(), args.node_ips.clone());
    node.cluster_cidr = args.cluster_cidr;
    node.service_cidrs = args.service_cidrs.clone();
    node.masquerade_all = args.masquerade_all;
    let mut input = ProxyInput::from_objects(node, &objects.services, &objects.endpoint_slices);
    if args.mode == ProxyMode::Userspace {
        // Like the live agent: one proxy port per service port, in service order.
        let mut ports = ProxyPortAllocator::new(args.seed);
        input.proxy_ports = ports.allocate_all(input.services.iter().map(|s| &s.name));
    }
    Ok((render(args.mode, &input), objects.warnings))
}
