//! `kemu node stop|start|restart`: a powered-off host. Its cgroup (agents, pods, commands run
//! on it) is frozen through the cgroup freezer and every link of its namespace set down, so
//! the rest of the lab sees it vanish; `start` sets the same links up and thaws it.

use std::time::Duration;

use super::kernel;
use super::state::{FaultState, StoppedNode};
use crate::lab::cgroup::LabCgroup;
use crate::lab::state::LabRecord;
use crate::netns::NetNs;

const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Stop `host` and record it; an error if it is stopped already.
pub fn stop(record: &LabRecord, state: &mut FaultState, host: &str) -> anyhow::Result<()> {
    let topo = &record.topology;
    let h = record.host(host)?;
    anyhow::ensure!(
        !state.stopped_nodes.iter().any(|n| n.host == h.name),
        "node {} is stopped already (`kemu node start {} {}`)",
        h.name,
        topo.name,
        h.name
    );
    let ns = NetNs::open(&topo.host_namespace(h))?;
    // Links first: a thawed process that runs for a moment more can no longer send.
    let mut node = StoppedNode {
        host: h.name.clone(),
        links: Vec::new(),
        frozen: false,
    };
    for link in kernel::links(&ns)? {
        if link.ifname != "lo" && link.is_up() {
            kernel::set_up(&ns, &link.ifname, false)?;
            node.links.push(link.ifname);
        }
    }
    if let Some(cg) = LabCgroup::of(&topo.name).filter(|cg| cg.exists()) {
        let cgroup = cg.host(&h.name);
        if cgroup.is_dir() {
            cg.freeze(&cgroup, true, FREEZE_TIMEOUT)?;
            node.frozen = true;
        }
    }
    state.stopped_nodes.push(node);
    Ok(())
}

/// Start a stopped `host` again: its links up, its processes thawed.
pub fn start(record: &LabRecord, state: &mut FaultState, host: &str) -> anyhow::Result<()> {
    let topo = &record.topology;
    let h = record.host(host)?;
    let Some(i) = state.stopped_nodes.iter().position(|n| n.host == h.name) else {
        anyhow::bail!("node {} is not stopped", h.name);
    };
    let node = state.stopped_nodes[i].clone();
    let ns = NetNs::open(&topo.host_namespace(h))?;
    for link in &node.links {
        kernel::set_up(&ns, link, true)?;
    }
    if node.frozen
        && let Some(cg) = LabCgroup::of(&topo.name)
    {
        cg.freeze(&cg.host(&h.name), false, FREEZE_TIMEOUT)?;
    }
    state.stopped_nodes.remove(i);
    Ok(())
}
