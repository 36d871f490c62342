//! The built-in `coredns` image (`registry.k8s.io/coredns/coredns`): kemu's cluster DNS server
//! (`crate::dns`). The real image reads a Corefile; this one takes the few settings of
//! kubeadm's Corefile that a lab varies as flags, and forwards other names to the nameservers
//! of its `/etc/resolv.conf`, as kubeadm's `forward . /etc/resolv.conf` does.

use std::process::ExitCode;

use clap::Parser;

/// `kemu builtin-image coredns --endpoint URL [--cluster-domain D] [--ttl S]`.
#[derive(Debug, Parser)]
#[command(
    name = "coredns",
    about = "kemu's built-in cluster DNS (the zone CoreDNS's kubernetes plugin serves)"
)]
struct Args {
    /// The API server to watch Services and EndpointSlices on (the kubernetes plugin's `endpoint`).
    #[arg(long)]
    endpoint: String,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// TTL of the answers, in seconds (kubeadm's Corefile: `ttl 30`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3600))]
    ttl: u32,
    /// DNS port (UDP and TCP).
    #[arg(long, default_value_t = 53)]
    port: u16,
    /// Where the upstream nameservers are read from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: std::path::PathBuf,
}

pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let args = Args::parse_from(std::iter::once("coredns".to_string()).chain(args));
    let upstreams = std::fs::read_to_string(&args.resolv_conf)
        .map(|text| crate::dns::server::upstreams_of(&text))
        .unwrap_or_default();
    let cfg = crate::dns::server::Config {
        api: args.endpoint,
        domain: args.cluster_domain,
        ttl: args.ttl,
        port: args.port,
        upstreams,
    };
    super::small_runtime()?.block_on(crate::dns::server::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
