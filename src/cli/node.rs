//! `kemu node stop|start|restart LAB HOST`: power a host off and on.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::faults::node;
use crate::faults::state::{FaultLock, FaultState};
use crate::lab::state::LabRecord;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NodeAction {
    /// Freeze the host's agents and pods and set its links down.
    Stop,
    /// Bring a stopped host back.
    Start,
    /// Stop, then start.
    Restart,
}

/// Power a host off (frozen, links down) or on.
#[derive(Debug, Args)]
pub struct NodeArgs {
    pub action: NodeAction,
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Host name or underlay IP.
    pub host: String,
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let _lock = FaultLock::take(&dir)?;
    let mut state = FaultState::load(&dir)?;
    let result = match args.action {
        NodeAction::Stop => node::stop(&record, &mut state, &args.host),
        NodeAction::Start => node::start(&record, &mut state, &args.host),
        NodeAction::Restart => node::stop(&record, &mut state, &args.host).and_then(|()| {
            state.save(&dir)?;
            node::start(&record, &mut state, &args.host)
        }),
    };
    state.save(&dir)?;
    result?;
    let name = &record.host(&args.host)?.name;
    match state.stopped_nodes.iter().find(|n| &n.host == name) {
        Some(n) => println!(
            "node {name}: stopped (links {} down{})",
            n.links.join(" "),
            if n.frozen { ", processes frozen" } else { "" }
        ),
        None => println!("node {name}: running"),
    }
    Ok(ExitCode::SUCCESS)
}
