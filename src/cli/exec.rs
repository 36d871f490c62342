//! `kemu exec LAB HOST|pod/NS/NAME [-c CONTAINER] -- CMD ARGS...`: run a command on an emulated
//! host, or in a pod found by name.
//!
//! In a pod, a container with a root filesystem of its own (an image of the store) is entered
//! whole, as `kubectl exec` enters it (`kemu container-exec`: its mount, PID, UTS, IPC, network
//! and user namespaces). Other containers (built-in images, host commands, Docker's) see the
//! host's files: the command runs in the pod's network namespace, as root, with the host's
//! tools (`ss`, `ip`, `curl`, `tcpdump`).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::lab::exec::{host_command, in_host_cgroup, namespace_command};
use crate::lab::state::{LabDir, LabRecord};
use crate::observe::pods::{self, Entry};
use crate::observe::point::Point;

/// Run a command inside a host's namespace (by host name or underlay IP) or a pod's.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Host name or underlay IP (e.g. 192.168.0.202), or a pod: pod/NAMESPACE/NAME or pod/NAME.
    pub host: String,
    /// The pod's container (default: the `kubectl.kubernetes.io/default-container`
    /// annotation's, else the first).
    #[arg(short, long)]
    pub container: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let point = Point::parse(&args.host).map_err(super::exit::usage)?;
    let (dir, record) = LabRecord::open(&args.lab)?;
    let mut command = match point {
        Point::Pod { namespace, name } => pod_command(&dir, &record, &namespace, &name, &args)?,
        Point::Host { dev: Some(_), .. } => {
            return Err(super::exit::usage(format!(
                "{}: exec runs on a host or in a pod, not on a device",
                args.host
            )));
        }
        Point::Host { host, dev: None } => {
            anyhow::ensure!(
                args.container.is_none(),
                "--container is for pods (pod/NAMESPACE/NAME)"
            );
            let host = record.host(&host)?;
            host_command(
                &dir,
                &host.name,
                &record.topology.host_namespace(host),
                &args.command,
            )?
        }
    };
    let status = command
        .status()
        .map_err(|e| anyhow::anyhow!("run {:?} in {}: {e}", args.command[0], args.host))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128 + sig as u8),
        _ => ExitCode::FAILURE,
    })
}

/// The command that runs `args.command` in a container of pod `namespace/name`.
fn pod_command(
    dir: &LabDir,
    record: &LabRecord,
    namespace: &str,
    name: &str,
    args: &ExecArgs,
) -> anyhow::Result<Command> {
    let api = crate::observe::LabApi::connect(record)?;
    let pod = api
        .rt
        .block_on(Api::<Pod>::namespaced(api.client.clone(), namespace).get_opt(name))
        .map_err(|e| anyhow::anyhow!("read pod {namespace}/{name} from {}: {e}", api.url))?
        .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} not found in lab {}", args.lab))?;
    let place = pods::locate(record, &pod)?;
    let container = args
        .container
        .clone()
        .or_else(|| place.default_container.clone())
        .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} has no containers"))?;
    let runtime = record.host(&place.host)?.runtime;
    match pods::entry(dir, &place, &container, runtime)? {
        Entry::Container(container_dir) => {
            let mut cmd = Command::new(&record.binary);
            cmd.arg("container-exec").arg("--dir").arg(&container_dir);
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                cmd.arg("--tty");
            }
            cmd.arg("--").args(&args.command);
            in_host_cgroup(dir, &place.host, &mut cmd)?;
            Ok(cmd)
        }
        Entry::Network => {
            let hostname = pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| place.name.clone());
            let hosts = pods::running_container(
                &pods::containers_dir(dir, &place.host),
                &place.uid,
                &container,
            )
            .map(|c| c.dir.join("hosts"));
            let hostname = if place.host_network {
                place.host.clone()
            } else {
                hostname
            };
            namespace_command(
                dir,
                &place.host,
                &place.netns,
                &hostname,
                hosts.as_deref(),
                &args.command,
            )
        }
    }
}
