//! `kemu up FILE`: build a lab from a topology file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::lab::state::LabDir;
use crate::lab::{UpOptions, up};
use crate::plan::{OverlayBy, plan};
use crate::topology::{ProxyMode, Topology};

/// Build a lab: namespaces, underlay, overlay, then the agents.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Topology file (YAML), e.g. topologies/seed.yaml.
    pub file: PathBuf,
    /// Lab name (default: the file's `name`); lets tests run one file several times at once.
    #[arg(long)]
    pub name: Option<crate::topology::LabName>,
    /// Print the ordered plan and exit; needs no privileges.
    #[arg(long)]
    pub dry_run: bool,
    /// Override the proxy mode of every host.
    #[arg(long, value_enum)]
    pub proxy_mode: Option<ProxyMode>,
    /// Seed of the random source (ClusterIPs, NodePorts, name suffixes, proxy ports).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Build the network only: no supervisor and no agents.
    #[arg(long)]
    pub network_only: bool,
    /// Kubeconfig to add the `kemu-<lab>` context to (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Do not touch any kubeconfig (the lab's own copy is still written to its state directory).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub no_kubeconfig: bool,
    /// Print per-phase timings.
    #[arg(long, short)]
    pub verbose: bool,
    /// No progress lines on stderr (warnings and errors still show).
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// Load the topology and apply command-line overrides.
pub fn load(args: &UpArgs) -> anyhow::Result<Topology> {
    // A file that cannot be read or does not describe a lab is a configuration error (exit 2).
    let mut topo = Topology::load(&args.file).map_err(|e| super::exit::usage(format!("{e:#}")))?;
    if let Some(name) = &args.name {
        topo.name = name.clone();
    }
    if let Some(mode) = args.proxy_mode {
        topo.proxy_mode = mode;
        for host in &mut topo.hosts {
            host.proxy_mode = mode;
        }
    }
    if let Some(seed) = args.seed {
        topo.control_plane.seed = Some(seed);
    }
    Ok(topo)
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let topo = load(&args)?;
    let dir = LabDir::new(&topo.name)?;
    if args.dry_run {
        let agents = crate::lab::agents::agent_specs(&topo, &dir, None);
        let overlay_by = if args.network_only || agents.is_empty() {
            OverlayBy::Launcher
        } else {
            OverlayBy::Agents
        };
        let plan = plan(&topo, &dir.root, overlay_by);
        println!(
            "# kemu up {}: lab {} ({} namespaces, {} kernel operations)",
            args.file.display(),
            topo.name,
            plan.namespaces.len(),
            plan.operation_count()
        );
        print!("{plan}");
        if !agents.is_empty() && !args.network_only {
            println!("# agents (started by `kemu supervise {}`)", topo.name);
            for a in agents {
                println!("      ip netns exec {} {}", a.namespace, a.command_line());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.quiet {
        super::progress::install();
    }
    // A lab whose supervisor died is brought back rather than refused (as `kemu repair`).
    if dir.is_lab()
        && crate::lab::supervisor::alive(&dir).is_none()
        && let Ok(mut record) = crate::lab::state::LabRecord::load(&dir)
        && record.api_port.is_some()
    {
        let outcome = crate::lab::repair::repair(&dir, &mut record)?;
        println!("{}", super::repair::describe(&topo.name, &outcome));
        if record.topology != topo {
            eprintln!(
                "note: the lab runs the topology it was started with, not the changed {}: `kemu down {}` first to apply the change",
                args.file.display(),
                topo.name
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = up(
        &topo,
        &UpOptions {
            source: Some(args.file.clone()),
            network_only: args.network_only,
            kubeconfig: if args.no_kubeconfig {
                None
            } else {
                args.kubeconfig
                    .clone()
                    .or_else(crate::lab::kubeconfig::default_path)
            },
        },
    );
    super::progress::finish();
    let report = report?;
    for w in &report.build.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "lab {} is up: {} hosts, {} namespaces, {} kernel operations in {:.3}s",
        topo.name,
        topo.hosts.len(),
        report.build.namespaces,
        report.build.operations,
        report.total.as_secs_f64()
    );
    if args.verbose {
        for (phase, t) in &report.build.phase_times {
            println!("  {phase:<14} {:.3}s", t.as_secs_f64());
        }
    }
    if let Some(port) = report.api_port {
        print!(
            "{}",
            cluster_summary(&topo, port, &report.nodes, args.no_kubeconfig)
        );
    }
    println!();
    println!(
        "  kemu status {}                   # hosts, subnets, agents",
        topo.name
    );
    println!(
        "  kemu exec {} HOST -- COMMAND     # run a command on a host",
        topo.name
    );
    println!("  kemu down {}", topo.name);
    Ok(ExitCode::SUCCESS)
}

/// The end of the seed's `kube-up.sh`: where the master is, `validate-cluster`'s node list
/// and verdict, and how to reach the API server from here and from inside the lab.
fn cluster_summary(
    topo: &Topology,
    port: u16,
    nodes: &[crate::lab::health::NodeRow],
    no_kubeconfig: bool,
) -> String {
    use std::fmt::Write;
    let master = format!(
        "http://{}:{}",
        topo.master().ip,
        crate::lab::forward::API_PORT
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nKubernetes cluster is running. The master is running at:\n\n  {master}\n"
    );
    if !nodes.is_empty() {
        let _ = writeln!(out, "... calling validate-cluster");
        let _ = writeln!(out, "Found {} nodes.", nodes.len());
        let width = nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4) + 3;
        let _ = writeln!(
            out,
            "{:<width$}{:<9}{:<16}VERSION",
            "NAME", "STATUS", "ROLES"
        );
        for n in nodes {
            let _ = writeln!(
                out,
                "{:<width$}{:<9}{:<16}{}",
                n.name, n.ready, n.roles, n.version
            );
        }
        let _ = writeln!(out, "Validate output:");
        let _ = writeln!(out, "Cluster validation succeeded");
    }
    let _ = writeln!(out, "Done, listing cluster services:\n");
    let _ = writeln!(out, "Kubernetes master is running at {master}\n");
    let local = format!("https://127.0.0.1:{port}");
    if no_kubeconfig {
        let _ = writeln!(
            out,
            "From this machine: kubectl --kubeconfig /run/kemu/{}/kubeconfig get nodes   ({local})",
            topo.name
        );
    } else {
        let _ = writeln!(
            out,
            "From this machine: kubectl get nodes   (context kemu-{}, {local})",
            topo.name
        );
    }
    let host = topo
        .minions()
        .find(|h| !h.is_master())
        .unwrap_or(topo.master());
    let _ = writeln!(
        out,
        "From a host:       kemu exec {} {} -- kubectl -s {master} get pods",
        topo.name, host.name
    );
    out
}
