//! Faults, live: link impairments (`kemu link`), partitions (`kemu partition`, `kemu heal`)
//! and powered-off nodes (`kemu node`). Every fault goes into the lab's own namespaces and
//! cgroups (never the root namespace) and is recorded in the lab state ([`state`]) with what
//! it changed, so removing it gives back exactly what was there.
//!
//! - [`spec`]: what a link fault asks for (pure parsing);
//! - [`render`]: faults as nftables tables and tc/iptables arguments (pure, snapshot-tested);
//! - [`engine`]: the impairment engines behind one trait (netem; kemu's own: tbf + nftables +
//!   the NFQUEUE delay line of [`delay`]);
//! - [`link`], [`partition`], [`node`]: each command's plan and its thin kernel layer
//!   ([`kernel`]).

pub mod delay;
pub mod engine;
pub mod history;
pub mod kernel;
pub mod link;
pub mod node;
pub mod partition;
pub mod render;
pub mod spec;
pub mod state;

use std::collections::BTreeSet;

use crate::lab::state::{LabDir, LabRecord};
use state::{FaultLock, FaultState};

/// Remove every fault of the lab: partitions, link faults, stopped nodes. Continues past
/// errors (a link fault whose removal failed stays recorded) and reports them at the end.
pub fn heal(dir: &LabDir, record: &LabRecord) -> anyhow::Result<usize> {
    let _lock = FaultLock::take(dir)?;
    let mut state = FaultState::load(dir)?;
    let mut errors = Vec::new();
    let mut healed = 0;
    for host in state
        .stopped_nodes
        .iter()
        .map(|n| n.host.clone())
        .collect::<Vec<_>>()
    {
        match node::start(record, &mut state, &host) {
            Ok(()) => healed += 1,
            Err(e) => errors.push(format!("start {host}: {e:#}")),
        }
    }
    if !state.partitions.is_empty() {
        let touched: BTreeSet<String> = state
            .partitions
            .iter()
            .flat_map(|p| p.hosts.iter().cloned())
            .collect();
        let count = state.partitions.len();
        state.partitions.clear();
        match partition::sync(record, &state, &touched) {
            Ok(()) => healed += count,
            Err(e) => errors.push(format!("partitions: {e:#}")),
        }
    }
    for l in state.links.clone() {
        let clear = link::LinkChange {
            clear: true,
            ..Default::default()
        };
        match link::change(dir, record, &mut state, &l.host, &l.dev, &clear) {
            Ok(_) => healed += 1,
            Err(e) => errors.push(format!("link {}:{}: {e:#}", l.host, l.dev)),
        }
    }
    state.save(dir)?;
    anyhow::ensure!(errors.is_empty(), "{}", errors.join("\n"));
    Ok(healed)
}
