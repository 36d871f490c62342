//! `kemu flanneld`: the overlay agent of a minion (started by the supervisor).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::flannel::{Config, run};

/// flannel with its Kubernetes subnet manager, for one emulated host.
#[derive(Debug, Args)]
pub struct FlanneldArgs {
    /// API server URL (flannel's --kube-api-url).
    #[arg(long)]
    pub kube_api_url: String,
    /// This host's Node name.
    #[arg(long)]
    pub node_name: String,
    /// This host's underlay address (flannel's --public-ip).
    #[arg(long)]
    pub public_ip: Ipv4Addr,
    /// flannel's net-conf.json.
    #[arg(long)]
    pub net_conf: PathBuf,
    /// Where to write subnet.env (flannel's --subnet-file).
    #[arg(long)]
    pub subnet_file: PathBuf,
    /// Masquerade traffic that leaves the cluster network (flannel's --ip-masq).
    #[arg(long)]
    pub ip_masq: bool,
    /// Underlay MTU.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Lab name.
    #[arg(long, env = "KEMU_LAB")]
    pub lab: String,
}

pub fn run_cli(args: FlanneldArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config {
        api_server: args.kube_api_url,
        node_name: args.node_name,
        public_ip: args.public_ip,
        net_conf: args.net_conf,
        subnet_file: args.subnet_file,
        ip_masq: args.ip_masq,
        mtu: args.mtu,
        lab: args.lab,
    };
    crate::client::agent_runtime()?.block_on(run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
