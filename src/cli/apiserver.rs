//! `kemu apiserver`: run the kubectl-compatible API server (see `kemu::api`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use ipnet::Ipv4Net;

use crate::api::alloc::parse_port_range;
use crate::api::routes::serve;
use crate::api::secure::SecureConfig;
use crate::api::server::Config;

/// Run the Kubernetes API server of a lab's master host.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Address and port to listen on (plain HTTP), e.g. `192.168.0.201:8080` or `127.0.0.1:0`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the durable store (created if missing). Without it nothing is kept.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CIDR ClusterIPs are allocated from; its first address goes to the `kubernetes` Service.
    #[arg(long, default_value = "10.0.0.0/24")]
    pub service_cluster_ip_range: Ipv4Net,
    /// Inclusive range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = port_range)]
    pub service_node_port_range: (u16, u16),
    /// Seed for random choices (uids, name suffixes, ClusterIPs, NodePorts), for reproducible labs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The master's IP: the `kubernetes` Service's endpoints point at it (default: the listen IP).
    #[arg(long)]
    pub advertise_address: Option<Ipv4Addr>,
    /// Sync every write to disk (survives power loss, slower); without it a write survives a crash
    /// of the process, not of the machine.
    #[arg(long)]
    pub fsync: bool,
    /// Watch events kept per resource type for watches that resume from an older resourceVersion.
    #[arg(long, default_value_t = 4096)]
    pub watch_history: usize,
    /// PEM private key (ECDSA P-256, PKCS#8, e.g. the lab CA's `<state>/pki/ca.key`) that signs
    /// service-account tokens. Without it the server signs with a key of its own process, and
    /// its tokens stop working when it restarts.
    #[arg(long)]
    pub service_account_signing_key_file: Option<PathBuf>,
    /// PEM private key whose tokens are also accepted (repeatable); tokens of the signing key
    /// always are.
    #[arg(long)]
    pub service_account_key_file: Vec<PathBuf>,
    /// Admission plugins to turn off (comma-separated), as kube-apiserver's flag; kemu's only
    /// optional one is `ServiceAccount` (an API server without a controller manager, as in
    /// envtest, has no `default` service accounts for pods to run as).
    #[arg(long, value_delimiter = ',', value_parser = ["ServiceAccount"])]
    pub disable_admission_plugins: Vec<String>,
    /// Serve HTTPS on this address too (what the `kubernetes` Service then points at), e.g.
    /// `192.168.0.201:6443`; needs the three files below.
    #[arg(long, requires_all = ["tls_cert_file", "tls_private_key_file", "client_ca_file"])]
    pub secure_listen: Option<SocketAddr>,
    /// PEM serving certificate of the secure port.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of the serving certificate.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// PEM CA whose client certificates authenticate on the secure port (CN user, O groups).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    parse_port_range(s)
}

/// Run until killed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        service_cidr: args.service_cluster_ip_range,
        node_port_range: args.service_node_port_range,
        seed: args.seed,
        advertise_address: args.advertise_address,
        fsync: args.fsync,
        watch_history: args.watch_history,
        service_account_signing_key_file: args.service_account_signing_key_file,
        service_account_key_files: args.service_account_key_file,
        service_account_admission: !args
            .disable_admission_plugins
            .iter()
            .any(|p| p == "ServiceAccount"),
        secure: match (
            args.secure_listen,
            args.tls_cert_file,
            args.tls_private_key_file,
            args.client_ca_file,
        ) {
            (Some(listen), Some(cert_file), Some(key_file), Some(client_ca_file)) => {
                Some(SecureConfig {
                    listen,
                    cert_file,
                    key_file,
                    client_ca_file,
                })
            }
            _ => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}
