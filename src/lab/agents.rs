//! Which processes run on which host: a pure function of the topology. The supervisor starts
//! them inside their host's namespace; `kemu up --dry-run` prints them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::process::userns::IdRange;
use crate::topology::Topology;

use super::state::LabDir;

/// The node agents, which have small binaries of their own (src/bin/): every minion runs one
/// of each, and a binary holding only that agent's code keeps its resident memory small (the
/// kernel maps nearly all of a binary's code into every process that runs it). `kemu kubelet`,
/// `kemu flanneld`, `kemu proxy` and `kemu netpol` run the same code when the binaries are
/// missing.
pub const NODE_AGENT_BINARIES: [(&str, &str); 4] = [
    ("kubelet", "kemu-kubelet"),
    ("flanneld", "kemu-flanneld"),
    ("proxy", "kemu-proxy"),
    ("netpol", "kemu-netpol"),
];

/// Environment variable through which the supervisor tells its agents where the `kemu`
/// binary is (the kubelet starts container shims and built-in images from it).
pub const KEMU_BINARY: &str = "KEMU_BINARY";

/// The API server's secure port on the master (kube-apiserver's default), where the
/// `kubernetes` Service's endpoints point.
pub const SECURE_PORT: u16 = 6443;

/// One supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The host it runs on.
    pub host: String,
    /// The host's namespace.
    pub namespace: String,
    /// `apiserver`, `kubelet`, ..., or a user daemon's name.
    pub name: String,
    /// Arguments; for kemu's own agents they follow the kemu binary.
    pub args: Vec<String>,
    /// Whether `args` are a kemu subcommand (true) or a whole command line (user daemons).
    pub kemu: bool,
}

impl AgentSpec {
    /// `host/name`, as shown by `status` and recorded in `pids/`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.host, self.name)
    }

    /// The program that runs this agent and its arguments. A node agent with a binary of
    /// its own beside `kemu` ([`NODE_AGENT_BINARIES`]) runs from it; the other agents run as
    /// `kemu <agent>`; a user daemon is its own command line.
    pub fn program<'a>(&'a self, kemu: &Path) -> (PathBuf, &'a [String]) {
        if !self.kemu {
            return (PathBuf::from(&self.args[0]), &self.args[1..]);
        }
        let own = NODE_AGENT_BINARIES
            .iter()
            .find(|(agent, _)| *agent == self.args[0])
            .map(|(_, binary)| kemu.with_file_name(binary))
            .filter(|binary| binary.exists());
        match own {
            Some(binary) => (binary, &self.args[1..]),
            None => (kemu.to_path_buf(), &self.args[..]),
        }
    }

    /// The command line, for display.
    pub fn command_line(&self) -> String {
        let mut words = Vec::new();
        if self.kemu {
            words.push("kemu".to_string());
        }
        words.extend(self.args.iter().cloned());
        words.join(" ")
    }
}

/// Every process of a lab, in start order: the control plane on the master (the API server
/// first; the others retry until it answers), the node agents on every minion, then the user's
/// daemons. Agents reach the API server over the underlay at `http://<master-ip>:8080`.
/// Kubelets get the lab's `pod_ids` (`--pod-id-range`), which they need to run pods; `None`
/// where the range does not matter (plans, `--dry-run`).
pub fn agent_specs(topo: &Topology, dir: &LabDir, pod_ids: Option<IdRange>) -> Vec<AgentSpec> {
    let mut specs = Vec::new();
    let master = topo.master();
    let api = format!("http://{}:{}", master.ip, super::forward::API_PORT);
    let seed: Vec<String> = topo
        .control_plane
        .seed
        .map(|s| vec!["--seed".to_string(), s.to_string()])
        .unwrap_or_default();
    let kemu = |host: &crate::topology::Host, name: &str, args: Vec<String>| AgentSpec {
        host: host.name.clone(),
        namespace: topo.host_namespace(host),
        name: name.to_string(),
        args: std::iter::once(name.to_string()).chain(args).collect(),
        kemu: true,
    };
    let mut apiserver = vec![
        format!("--listen={}:{}", master.ip, super::forward::API_PORT),
        format!("--advertise-address={}", master.ip),
        format!("--data-dir={}", dir.root.join("apiserver").display()),
        format!("--service-cluster-ip-range={}", topo.service_cidr),
        format!("--service-node-port-range={}", topo.node_port_range),
        // Service-account tokens signed by the lab CA's key outlive an API server restart.
        format!(
            "--service-account-signing-key-file={}",
            dir.pki().join("ca.key").display()
        ),
        // HTTPS for pods, through the `kubernetes` Service (kube-apiserver's secure port).
        format!("--secure-listen={}:{}", master.ip, SECURE_PORT),
        format!(
            "--tls-cert-file={}",
            dir.pki().join(super::pki::LAB_SERVER_CERT).display()
        ),
        format!(
            "--tls-private-key-file={}",
            dir.pki().join(super::pki::LAB_SERVER_KEY).display()
        ),
        format!("--client-ca-file={}", dir.pki().join("ca.crt").display()),
    ];
    apiserver.extend(seed.iter().cloned());
    specs.push(kemu(master, "apiserver", apiserver));
    let mut scheduler = vec![format!("--master={api}")];
    scheduler.extend(seed.iter().cloned());
    specs.push(kemu(master, "scheduler", scheduler));
    let cp = &topo.control_plane;
    let mut controllers = vec![
        format!("--master={api}"),
        format!(
            "--node-monitor-grace-period={}ms",
            cp.node_monitor_grace_period.as_millis()
        ),
        format!(
            "--pod-eviction-timeout={}ms",
            cp.pod_eviction_timeout.as_millis()
        ),
        format!("--root-ca-file={}", dir.pki().join("ca.crt").display()),
    ];
    // Provisioned volumes live in the lab's state directory and go with it.
    controllers.push(format!(
        "--local-path-root={}",
        dir.root.join("volumes").display()
    ));
    controllers.extend(seed.iter().cloned());
    specs.push(kemu(master, "controller-manager", controllers));
    for host in topo.minions() {
        let host_dir = dir.host_dir(&host.name);
        let mut kubelet = vec![
            format!("--api-server={api}"),
            format!("--node-name={}", host.name),
            format!("--node-ip={}", host.ip),
            format!(
                "--pod-cidr={}",
                host.subnet.expect("validated: minions have a subnet")
            ),
            format!("--root-dir={}", host_dir.join("kubelet").display()),
            format!("--pod-mtu={}", topo.pod_mtu()),
            format!(
                "--network-ready-file={}",
                host_dir.join("subnet.env").display()
            ),
            format!(
                "--restart-backoff={}ms",
                topo.kubelet.restart_back_off.as_millis()
            ),
            format!("--max-pods={}", topo.kubelet.max_pods),
            format!("--cluster-domain={}", topo.dns.cluster_domain),
        ];
        if let Some(ip) = topo.dns_service_ip() {
            kubelet.push(format!("--cluster-dns={ip}"));
        }
        if !topo.dns.upstream.is_empty() {
            kubelet.push(format!(
                "--resolv-conf={}",
                dir.root.join("resolv.conf").display()
            ));
        }
        if host.is_master() {
            kubelet.push("--node-labels=node-role.kubernetes.io/control-plane=".to_string());
        }
        if let Some(ids) = pod_ids {
            kubelet.push(format!("--pod-id-range={ids}"));
        }
        if host.runtime == crate::runtime::RuntimeKind::Docker {
            kubelet.push("--runtime=docker".to_string());
            if let Ok(socket) = crate::runtime::docker::socket_from_env() {
                kubelet.push(format!("--docker-socket={}", socket.display()));
            }
        }
        specs.push(kemu(host, "kubelet", kubelet));
        specs.push(kemu(
            host,
            "flanneld",
            vec![
                format!("--kube-api-url={api}"),
                format!("--node-name={}", host.name),
                format!("--public-ip={}", host.ip),
                format!("--net-conf={}", dir.root.join("net-conf.json").display()),
                format!(
                    "--subnet-file={}",
                    dir.host_dir(&host.name).join("subnet.env").display()
                ),
                "--ip-masq".to_string(),
                format!("--mtu={}", topo.mtu),
            ],
        ));
        // The mode file (written by `up`, changed by `kemu proxy mode`) wins over --mode.
        let mut proxy = vec![
            format!("--master={api}"),
            format!("--node-name={}", host.name),
            format!("--node-ip={}", host.ip),
            format!("--cluster-cidr={}", topo.cluster_network.network),
            format!("--service-cidr={}", topo.service_cidr),
            format!("--mode={}", host.proxy_mode),
            format!("--mode-file={}", dir.proxy_mode_file(&host.name).display()),
            format!(
                "--status-file={}",
                dir.proxy_status_file(&host.name).display()
            ),
        ];
        if let Some(version) = topo.proxy_version {
            proxy.push(format!("--kube-proxy-version={version}"));
        }
        proxy.extend(seed.iter().cloned());
        specs.push(kemu(host, "proxy", proxy));
        // NetworkPolicy enforcement, a process of its own as kindnet's policy controller is
        // beside kube-proxy: it works whatever the proxy's mode, and a crash of either
        // leaves the other's rules alone.
        specs.push(kemu(
            host,
            "netpol",
            vec![
                format!("--master={api}"),
                format!("--node-name={}", host.name),
                format!(
                    "--status-file={}",
                    dir.netpol_status_file(&host.name).display()
                ),
            ],
        ));
    }
    for host in &topo.hosts {
        for daemon in &host.daemons {
            specs.push(AgentSpec {
                host: host.name.clone(),
                namespace: topo.host_namespace(host),
                name: daemon.name.clone(),
                args: daemon.command.clone(),
                kemu: false,
            });
        }
    }
    specs
}
