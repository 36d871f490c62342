//! Command-line interface: one file per subcommand, each with a clap `Args` struct and `run()`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent;
pub mod apiserver;
mod builtin_image;
mod capture;
mod conntrack;
mod container_exec;
mod container_shim;
mod controller_manager;
mod docs;
mod down;
mod events;
mod exec;
pub mod exit;
pub mod flanneld;
mod generate;
mod graph;
mod image;
mod kubeconfig;
pub mod kubelet;
mod link;
mod list;
mod logs;
pub mod netpol;
mod node;
mod output;
mod partition;
mod progress;
pub mod proxy;
mod reach;
mod repair;
mod run;
mod scheduler;
mod schema;
mod snapshot;
mod status;
mod trace;
mod up;

/// kemu: a single-host, multi-node Kubernetes emulator on network namespaces.
#[derive(Debug, Parser)]
#[command(name = "kemu", version, about, long_about = None)]
pub struct Cli {
    /// Log filter: a level or `target=level` directives, e.g. `info` or `warn,kemu=debug`.
    #[arg(long, global = true, env = "KEMU_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// A long-running server (an agent, the supervisor, a built-in image, the delay line):
    /// a peer that goes away must be an `EPIPE` on that connection, never a SIGPIPE that ends
    /// the whole process silently (a supervisor killed by a kubectl that hung up took its
    /// lab's API endpoint with it).
    pub fn is_server(&self) -> bool {
        match self {
            Command::Supervise { .. }
            | Command::Apiserver(_)
            | Command::Scheduler(_)
            | Command::ControllerManager(_)
            | Command::Kubelet(_)
            | Command::Flanneld(_)
            | Command::BuiltinImage(_)
            | Command::FaultEngine(_) => true,
            Command::Proxy(args) => args.command.is_none(),
            Command::Netpol(args) => args.command.is_none(),
            _ => false,
        }
    }
}

/// The subcommands. Launcher commands first, then the agents that `kemu up` starts.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a lab from a topology file.
    Up(up::UpArgs),
    /// Tear a lab down.
    Down(down::DownArgs),
    /// List the labs that are up: hosts, age, state, API address.
    List(list::ListArgs),
    /// Show a lab's hosts, subnets and agents.
    Status(status::StatusArgs),
    /// Print the logs of a lab's agents (`-f` to follow them).
    Logs(logs::LogsArgs),
    /// Print a lab's kubeconfig, or add it to yours (`--write`).
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Restart a lab's supervisor after it died, adopting the agents that still run.
    Repair(repair::RepairArgs),
    /// Run a command on an emulated host.
    Exec(exec::ExecArgs),
    /// Capture packets at hosts, devices and pods into one pcapng file (`-w -`: stdout).
    Capture(capture::CaptureArgs),
    /// Follow one probe through every host's netfilter rules, chain by chain, rule by rule.
    Trace(trace::TraceArgs),
    /// A host's (or pod's) conntrack table, with the NAT of each entry (`--service`: one Service's).
    Conntrack(conntrack::ConntrackArgs),
    /// One time line of the lab: events, node conditions, endpoints, proxy syncs, faults.
    Events(events::EventsArgs),
    /// Impair, cut or shrink a host's link (delay, loss, rate, MTU, ...); `--clear` undoes it.
    Link(link::LinkArgs),
    /// Cut hosts off from others, on the control plane, the data plane or both.
    Partition(partition::PartitionArgs),
    /// Remove every fault of a lab (links, partitions, stopped nodes).
    Heal(partition::HealArgs),
    /// Power a host off (agents and pods frozen, links down) or on again.
    Node(node::NodeArgs),
    /// Crash or restart one agent of a host.
    Agent(agent::AgentArgs),
    /// Run a scenario file: a lab, manifests and steps with expectations.
    Run(run::RunArgs),
    /// Print an N-host topology file.
    Generate(generate::GenerateArgs),
    /// Draw a lab (a file or a running lab): segments, router, hosts, overlay, pods.
    Graph(graph::GraphArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print kemu's man page (`--dir` writes one per command).
    Man(docs::ManArgs),
    /// Print the topology file's JSON Schema (`--reference`: the README's field table).
    Schema(schema::SchemaArgs),
    /// Run the kubectl-compatible Kubernetes API server (master host).
    Apiserver(apiserver::Args),
    /// The pod scheduler of the master.
    Scheduler(scheduler::SchedulerArgs),
    /// The reachability matrix of a running lab: every source to every service, NodePort and pod.
    Reach(reach::ReachArgs),
    /// Print the live, normalised iptables/nftables rules of a lab's hosts.
    Snapshot(snapshot::SnapshotArgs),
    /// The controllers of the master (replication, deployments, endpoints, node lifecycle, GC).
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// The node agent of a minion: registers the Node and runs its pods.
    Kubelet(kubelet::KubeletArgs),
    /// The overlay agent of a minion (flannel with its Kubernetes subnet manager).
    Flanneld(flanneld::FlanneldArgs),
    /// The service proxy agent (`render` prints a node's rules, `mode` switches a lab's mode).
    Proxy(Box<proxy::ProxyArgs>),
    /// The NetworkPolicy agent of a minion (`render` prints a node's policy table).
    Netpol(netpol::NetpolArgs),
    /// Manage the image store shared by all labs: load, ls, rm, pull, gc.
    Image(image::ImageArgs),
    /// Run a built-in container image (started inside containers by the process runtime).
    #[command(hide = true)]
    BuiltinImage(builtin_image::BuiltinImageArgs),
    /// Own one container of the process runtime (started by the kubelet).
    #[command(hide = true)]
    ContainerShim(container_shim::ContainerShimArgs),
    /// Run a command in a running container (started by the kubelet for `kubectl exec`).
    #[command(hide = true)]
    ContainerExec(container_exec::ContainerExecArgs),
    /// The delay line of a link fault (started by `kemu link`).
    #[command(hide = true)]
    FaultEngine(link::EngineArgs),
    /// Run a lab's supervisor (started by `kemu up`).
    #[command(hide = true)]
    Supervise {
        /// Lab name.
        lab: crate::topology::LabName,
    },
}

/// Initialise tracing on stderr with the filter given by `--log` / `KEMU_LOG`.
pub fn init_tracing(cli: &Cli) {
    init_log(&cli.log);
}

/// Log to stderr with a filter of `target=level` directives, as `RUST_LOG` takes them
/// (`warn` when the filter does not parse). `Targets` rather than `EnvFilter`: it needs no
/// regex engine, which would be most of a small agent's code.
pub fn init_log(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = filter.parse().unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN)
    });
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// Run the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Down(args) => down::run(args),
        Command::List(args) => list::run(args),
        Command::Status(args) => status::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Kubeconfig(args) => kubeconfig::run(args),
        Command::Repair(args) => repair::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Conntrack(args) => conntrack::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Events(args) => events::run(args),
        Command::Link(args) => link::run(args),
        Command::Partition(args) => partition::run(args),
        Command::Heal(args) => partition::heal(args),
        Command::Node(args) => node::run(args),
        Command::Agent(args) => agent::run(args),
        Command::FaultEngine(args) => link::run_engine(args),
        Command::Generate(args) => generate::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Run(args) => run::run(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Schema(args) => schema::run(args),
        Command::Apiserver(args) => apiserver::run(args),
        Command::Flanneld(args) => flanneld::run_cli(args),
        Command::Kubelet(args) => kubelet::run_cli(args),
        Command::Scheduler(args) => scheduler::run(args),
        Command::Reach(args) => reach::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::ControllerManager(args) => controller_manager::run(args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Netpol(args) => netpol::run(args),
        Command::Image(args) => image::run(args),
        Command::BuiltinImage(args) => builtin_image::run(args),
        Command::ContainerShim(args) => container_shim::run(args),
        Command::ContainerExec(args) => container_exec::run(args),
        Command::Supervise { lab } => crate::lab::supervisor::run(&lab).map(|_| ExitCode::SUCCESS),
    }
}

/// The lab a command refers to: the one given, or the only one that is up.
pub(crate) fn pick_lab(
    given: Option<&crate::topology::LabName>,
) -> anyhow::Result<crate::topology::LabName> {
    if let Some(lab) = given {
        return Ok(lab.clone());
    }
    let labs = crate::lab::list_labs();
    match labs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(crate::lab::state::LabNotFound::None.into()),
        many => Err(exit::usage(format!(
            "several labs are up ({}): name one",
            many.iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
