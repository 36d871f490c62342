//! Which processes run on which host: a pure function of the topology. The supervisor starts
//! them inside their host's namespace; `kemu up --dry-run` prints them.

use serde::{Deserialize, Serialize};

use crate::topology::Topology;

use super::state::LabDir;

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

/// Every process of a lab, in start order (control plane first, then node agents, then user
/// daemons).
pub fn agent_specs(topo: &Topology, _dir: &LabDir) -> Vec<AgentSpec> {
    let mut specs = Vec::new();
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
