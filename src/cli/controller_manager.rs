//! `kemu controller-manager`: replication, deployments, endpoints, node lifecycle, garbage
//! collection, jobs, cron jobs, daemon sets, stateful sets, volumes and namespaces (started on
//! the master by the supervisor).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// The controllers of kube-controller-manager that a lab needs.
#[derive(Debug, Args)]
pub struct ControllerManagerArgs {
    /// API server URL, e.g. http://192.168.0.201:8080.
    #[arg(long)]
    pub master: String,
    /// How long a node may miss heartbeats before it is marked NotReady/Unknown (e.g. 8s).
    #[arg(long, default_value = "8s", value_parser = crate::topology::parse_duration_arg)]
    pub node_monitor_grace_period: Duration,
    /// How long pods stay on a node that is not Ready before they are evicted (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = crate::topology::parse_duration_arg)]
    pub pod_eviction_timeout: Duration,
    /// Nodes per second tainted for eviction in a zone that is not disrupted (kube's default).
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// Nodes per second tainted for eviction in a partially disrupted zone of more than
    /// --large-cluster-size-threshold nodes (smaller ones stop).
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Zones of more nodes than this keep evicting (at the secondary rate) when partially
    /// disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Fraction of not-Ready nodes (at least 3) that makes a zone partially disrupted.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Seed for generated names (pod and EndpointSlice suffixes).
    #[arg(long)]
    pub seed: Option<u64>,
    /// PEM CA bundle published to every namespace as the ConfigMap `kube-root-ca.crt`.
    #[arg(long)]
    pub root_ca_file: Option<std::path::PathBuf>,
    /// Directory under which the local-path provisioner (`kemu.io/local-path`) makes the
    /// directories of the volumes it provisions; without it nothing is provisioned.
    #[arg(long)]
    pub local_path_root: Option<std::path::PathBuf>,
}

pub fn run(args: ControllerManagerArgs) -> anyhow::Result<ExitCode> {
    let cfg = crate::controllers::Config {
        master: args.master,
        node_monitor_grace_period: args.node_monitor_grace_period,
        pod_eviction_timeout: args.pod_eviction_timeout,
        eviction_rates: crate::controllers::nodelifecycle::zones::Rates {
            eviction_rate: args.node_eviction_rate,
            secondary_eviction_rate: args.secondary_node_eviction_rate,
            large_cluster_size_threshold: args.large_cluster_size_threshold,
            unhealthy_zone_threshold: args.unhealthy_zone_threshold,
        },
        seed: args.seed,
        root_ca: match &args.root_ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("read --root-ca-file {}: {e}", path.display()))?,
            ),
            None => None,
        },
        local_path_root: args.local_path_root,
    };
    crate::client::agent_runtime()?.block_on(crate::controllers::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
