//! `kemu kubelet`: the node agent of a minion (started by the supervisor).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;

use crate::kubelet::{Config, run};
use crate::runtime::RuntimeKind;
use crate::runtime::process::userns::IdRange;

/// Registers the Node, heartbeats, runs the pods bound to it.
#[derive(Debug, Args)]
pub struct KubeletArgs {
    /// API server URL, e.g. http://192.168.0.201:8080.
    #[arg(long)]
    pub api_server: String,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
    /// This node's underlay address (the Node's InternalIP; the server listens on it).
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The pod subnet leased to this host.
    #[arg(long)]
    pub pod_cidr: Ipv4Net,
    /// Lab name (pod namespaces are kemu-<lab>-pod-<id>).
    #[arg(long, env = "KEMU_LAB")]
    pub lab: crate::topology::LabName,
    /// State directory (containers, IP allocations).
    #[arg(long)]
    pub root_dir: PathBuf,
    /// MTU of pod interfaces.
    #[arg(long, default_value_t = 1450)]
    pub pod_mtu: u32,
    /// Port of the kubelet's server (logs, exec).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// The node is Ready once this file exists (flanneld's subnet.env).
    #[arg(long)]
    pub network_ready_file: Option<PathBuf>,
    /// Extra node labels, key=value,...
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// First delay of the container restart back-off (doubles up to 5m).
    #[arg(long, default_value = "10s", value_parser = crate::topology::parse_duration_arg)]
    pub restart_backoff: std::time::Duration,
    /// Pod capacity.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The kemu binary, which runs container shims and built-in images (default: this
    /// program, or the `kemu` beside `kemu-kubelet`).
    #[arg(long, env = crate::lab::agents::KEMU_BINARY)]
    pub kemu_binary: Option<PathBuf>,
    /// The host uids and gids that pods' user namespaces map their ids 0.. onto, START:SIZE
    /// (`kemu up` allocates one range per lab). Root in a pod is host uid START.
    #[arg(long)]
    pub pod_id_range: IdRange,
    /// The cluster DNS Service's IP, put in pods' resolv.conf (`dnsPolicy: ClusterFirst`).
    #[arg(long)]
    pub cluster_dns: Option<Ipv4Addr>,
    /// The cluster domain of pods' DNS search list.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The node's resolv.conf, for `dnsPolicy: Default` ("": `nameserver 127.0.0.1`, search `.`).
    #[arg(long, default_value = "")]
    pub resolv_conf: String,
    /// The container runtime: `process` (kemu's own) or `docker` (the local Docker engine).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// The Docker engine's unix socket (the docker runtime).
    #[arg(long, default_value = crate::runtime::docker::DEFAULT_SOCKET)]
    pub docker_socket: PathBuf,
}

pub fn run_cli(args: KubeletArgs) -> anyhow::Result<ExitCode> {
    let mut labels = BTreeMap::new();
    for l in &args.node_labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let kemu_binary = match args.kemu_binary {
        Some(path) => path,
        None => default_kemu_binary()?,
    };
    let cfg = Config {
        api_server: args.api_server,
        node_name: args.node_name,
        node_ip: args.node_ip,
        pod_cidr: args.pod_cidr,
        lab: args.lab,
        root_dir: args.root_dir,
        pod_mtu: args.pod_mtu,
        port: args.port,
        network_ready_file: args.network_ready_file,
        labels,
        restart_backoff: args.restart_backoff,
        max_pods: args.max_pods,
        kemu_binary,
        pod_ids: args.pod_id_range,
        dns: crate::kubelet::dns::DnsSettings {
            cluster_dns: args.cluster_dns,
            cluster_domain: args.cluster_domain,
            node: if args.resolv_conf.is_empty() {
                None
            } else {
                let text = std::fs::read_to_string(&args.resolv_conf)
                    .with_context(|| format!("read --resolv-conf {}", args.resolv_conf))?;
                Some(crate::kubelet::dns::ResolvConf::parse(&text))
            },
        },
        runtime: args.runtime,
        docker_socket: args.docker_socket,
    };
    crate::client::agent_runtime()?.block_on(run(cfg))?;
    Ok(ExitCode::SUCCESS)
}

/// This program when it is `kemu`; the `kemu` beside it when it is `kemu-kubelet`.
fn default_kemu_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locate the kemu binary")?;
    Ok(match me.file_name() {
        Some(name) if name == "kemu-kubelet" => me.with_file_name("kemu"),
        _ => me,
    })
}
