//! The faults of a lab, recorded in `<lab dir>/faults.json` (written through the state root's
//! path guard) with what each one changed, so that `--clear`, `heal` and `node start` give
//! back exactly what was there before. Commands that change faults hold `faults.lock`.

use std::fs::File;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::Impairment;
use crate::lab::state::{LabDir, ProcessRecord};

/// Every fault in force in a lab.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultState {
    #[serde(default)]
    pub links: Vec<LinkFault>,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub stopped_nodes: Vec<StoppedNode>,
}

/// One link's faults: its egress impairments, its state and MTU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkFault {
    pub host: String,
    pub dev: String,
    #[serde(default)]
    pub down: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub impairment: Impairment,
    /// What the engine put in place for `impairment` (none when it is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineState>,
    /// The link's MTU before the first `--mtu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_mtu: Option<u32>,
    /// Offload settings switched off for `--mtu`, as they were before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offloads: Vec<Offloads>,
}

impl LinkFault {
    /// Whether nothing is left to undo.
    pub fn is_clear(&self) -> bool {
        !self.down && self.mtu.is_none() && self.impairment.is_empty()
    }
}

/// The GSO/TSO/GRO settings of one device before kemu switched them off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offloads {
    pub netns: String,
    pub dev: String,
    /// `(ethtool feature, was on)` for each feature kemu changed.
    pub features: Vec<(String, bool)>,
}

/// What an impairment engine set up on a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "engine")]
pub enum EngineState {
    /// One netem qdisc at the root of the link.
    Netem,
    /// kemu's own: tbf for the rate, an nftables table for loss and corruption, an NFQUEUE
    /// rule and a delay-line process for delay, jitter, reordering and duplication.
    Userspace {
        #[serde(default)]
        tbf: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nft_table: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<QueueState>,
    },
}

/// The NFQUEUE half of the userspace engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueState {
    pub num: u16,
    /// The delay-line process (stopped by PID and start time).
    pub process: ProcessRecord,
    /// The iptables rule's arguments (for `iptables -D`).
    pub rule: Vec<String>,
    /// Whether kemu created the `mangle` table for the rule (then it removes it again).
    pub created_mangle: bool,
}

/// Which traffic a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Plane {
    /// Traffic to and from the API server.
    Control,
    /// Everything else: pods, the overlay, services.
    Data,
    /// Both.
    All,
}

impl std::fmt::Display for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Plane::Control => "control",
            Plane::Data => "data",
            Plane::All => "all",
        })
    }
}

/// Hosts cut from other hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    pub hosts: Vec<String>,
    /// The other side (every other host when not given).
    pub from: Vec<String>,
    pub plane: Plane,
    /// Only traffic from `hosts` to `from` is cut.
    #[serde(default)]
    pub one_way: bool,
}

/// A powered-off host: its cgroup frozen and its links down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoppedNode {
    pub host: String,
    /// The links that were up and were set down (set up again by `start`).
    pub links: Vec<String>,
    /// Whether the host's cgroup was frozen (there is none without cgroup v2).
    pub frozen: bool,
}

/// `<lab dir>/faults.json`.
pub fn path(dir: &LabDir) -> PathBuf {
    dir.root.join("faults.json")
}

impl FaultState {
    /// The recorded faults (none when the file does not exist).
    pub fn load(dir: &LabDir) -> anyhow::Result<FaultState> {
        match std::fs::read_to_string(path(dir)) {
            Ok(text) => Ok(serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path(dir).display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FaultState::default()),
            Err(e) => Err(anyhow::anyhow!("read {}: {e}", path(dir).display())),
        }
    }

    /// Write atomically (an empty state removes the file), and add what changed since the
    /// state on disk to the lab's fault history.
    pub fn save(&self, dir: &LabDir) -> anyhow::Result<()> {
        let before = FaultState::load(dir).unwrap_or_default().describe();
        self.write(dir)?;
        super::history::append(dir, &super::history::changes(&before, &self.describe()))
    }

    fn write(&self, dir: &LabDir) -> anyhow::Result<()> {
        if self.is_empty() {
            match dir.owner.remove_file(&path(dir)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        dir.owner
            .write_atomic(&path(dir), serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.partitions.is_empty() && self.stopped_nodes.is_empty()
    }

    /// The link fault of `host:dev`, if any.
    pub fn link(&self, host: &str, dev: &str) -> Option<&LinkFault> {
        self.links.iter().find(|l| l.host == host && l.dev == dev)
    }

    /// One line per fault, for `kemu status`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.links {
            let mut parts = Vec::new();
            if l.down {
                parts.push("down".to_string());
            }
            if let Some(mtu) = l.mtu {
                parts.push(format!("mtu {mtu} (offloads off)"));
            }
            if !l.impairment.is_empty() {
                parts.push(l.impairment.to_string());
            }
            let engine = match &l.engine {
                Some(EngineState::Netem) => " [netem]",
                Some(EngineState::Userspace { .. }) => " [kemu engine]",
                None => "",
            };
            out.push(format!(
                "link {}:{}: {}{engine}",
                l.host,
                l.dev,
                parts.join(", ")
            ));
        }
        for p in &self.partitions {
            out.push(format!(
                "partition ({} plane{}): {} {} {}",
                p.plane,
                if p.one_way { ", one way" } else { "" },
                p.hosts.join(" "),
                if p.one_way { "->" } else { "<->" },
                p.from.join(" ")
            ));
        }
        for n in &self.stopped_nodes {
            out.push(format!(
                "node {}: stopped (agents and pods frozen, links {} down)",
                n.host,
                n.links.join(" ")
            ));
        }
        out
    }
}

/// An exclusive lock on the lab's faults, held while they are read, changed and written.
pub struct FaultLock {
    _file: nix::fcntl::Flock<File>,
}

impl FaultLock {
    pub fn take(dir: &LabDir) -> anyhow::Result<FaultLock> {
        let file = dir.owner.open_append(&dir.root.join("faults.lock"))?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("lock the lab's faults: {e}"))?;
        Ok(FaultLock { _file: file })
    }
}
