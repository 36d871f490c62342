//! `kemu events LAB [--follow] [-o json]`: one time line of the lab: Kubernetes events, node
//! conditions, endpoint changes, each node's proxy rule syncs and the faults applied and
//! removed, in time order with their source (see [`crate::observe::timeline`]). `--follow`
//! keeps polling and prints what is new until the lab goes down or the command is stopped.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use super::output::Format;
use crate::lab::state::{LabDir, LabRecord};
use crate::observe::LabApi;
use crate::observe::timeline::{self, Event, SliceState};
use crate::proxy::agent::control::ProxyStatus;

/// Print the lab's time line.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Keep printing new events (polled every --interval) until the lab goes down.
    #[arg(long, short)]
    pub follow: bool,
    /// How often `--follow` looks for new events.
    #[arg(long, default_value = "500ms", value_parser = crate::topology::parse_duration_arg)]
    pub interval: Duration,
    /// Output format (`json` with --follow: one event per line).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Reads the sources of a lab's time line.
struct Collector {
    dir: LabDir,
    record: LabRecord,
    api: Option<LabApi>,
    /// The slices at the last poll (following), and the changes seen since the start.
    slices: Option<BTreeMap<String, SliceState>>,
    slice_changes: Vec<Event>,
}

impl Collector {
    /// Every event the sources hold now. A source that cannot be read (the API server of a
    /// partitioned or stopped master) is left out with a warning, the others still show.
    fn gather(&mut self, warn: &mut dyn FnMut(String)) -> Vec<Event> {
        let mut parts = vec![
            timeline::from_faults(&crate::faults::history::read(&self.dir)),
            timeline::from_agents(&crate::lab::supervisor::read_status(&self.dir)),
        ];
        for host in self.record.topology.hosts.iter().filter(|h| h.is_minion()) {
            if let Some(status) = ProxyStatus::read(&self.dir.proxy_status_file(&host.name)) {
                let syncs: Vec<_> = status.recent_syncs.into_iter().collect();
                parts.push(timeline::from_syncs(&host.name, &syncs));
            }
        }
        if let Some(api) = &self.api {
            let client = api.client.clone();
            let read = api.rt.block_on(async {
                let lp = ListParams::default();
                let list = async {
                    let events = Api::<KubeEvent>::all(client.clone()).list(&lp).await?;
                    let nodes = Api::<Node>::all(client.clone()).list(&lp).await?;
                    let slices = Api::<EndpointSlice>::all(client.clone()).list(&lp).await?;
                    anyhow::Ok((events.items, nodes.items, slices.items))
                };
                tokio::time::timeout(Duration::from_secs(3), list)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 3 s")))
            });
            match read {
                Ok((events, nodes, slices)) => {
                    parts.push(timeline::from_kube_events(&events));
                    parts.push(timeline::from_nodes(&nodes));
                    let now: BTreeMap<String, SliceState> =
                        slices.iter().map(timeline::slice_state).collect();
                    match &self.slices {
                        None => parts.push(timeline::from_slices(&slices)),
                        Some(before) => {
                            self.slice_changes.extend(timeline::slice_changes(
                                before,
                                &now,
                                jiff::Timestamp::now(),
                            ));
                            parts.push(timeline::from_slices(&slices));
                        }
                    }
                    self.slices = Some(now);
                }
                Err(e) => warn(format!(
                    "the API server at {} cannot be read ({e:#}): no Kubernetes events this time",
                    api.url
                )),
            }
        }
        parts.push(self.slice_changes.clone());
        timeline::merge(parts)
    }
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let api = match record.api_port {
        Some(_) => Some(LabApi::connect(&record)?),
        None => None,
    };
    let mut collector = Collector {
        dir,
        record,
        api,
        slices: None,
        slice_changes: Vec::new(),
    };
    let mut warned = HashSet::new();
    let mut warn = |w: String| {
        if warned.insert(w.clone()) {
            eprintln!("warning: {w}");
        }
    };
    let events = collector.gather(&mut warn);
    if !args.follow {
        match args.output {
            Format::Table => print!("{}", timeline::render(&events)),
            Format::Json => println!("{}", serde_json::to_string_pretty(&events)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let print = |e: &Event| -> anyhow::Result<()> {
        match args.output {
            Format::Table => println!("{}", timeline::line(e)),
            Format::Json => println!("{}", serde_json::to_string(e)?),
        }
        Ok(())
    };
    if args.output == Format::Table {
        print!("{}", timeline::render(&[]));
    }
    let mut printed: HashSet<Event> = HashSet::new();
    for e in &events {
        print(e)?;
        printed.insert(e.clone());
    }
    loop {
        std::thread::sleep(args.interval);
        if !collector.dir.exists() {
            eprintln!("lab {} is down", args.lab);
            return Ok(ExitCode::SUCCESS);
        }
        for e in collector.gather(&mut warn) {
            if printed.insert(e.clone()) {
                print(&e)?;
            }
        }
    }
}
