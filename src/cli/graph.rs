//! `kemu graph FILE|LAB [--format mermaid|dot|svg]`: a picture of a lab (see [`crate::graph`]).
//! From a file: what the file describes. From a running lab: the same, plus each host's live
//! proxy mode (as `kemu status` shows it) and the pods the API server has bound to each node.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::graph::{Live, PodItem, dot, mermaid, model, svg};
use crate::lab::state::LabRecord;
use crate::topology::{LabName, Topology};

/// Draw a lab's segments, router, hosts and overlay (and, running, its pods and proxy modes).
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// A topology file, or the name of a running lab (a file of that name wins).
    pub what: String,
    /// Output format: Mermaid (GitHub renders it), Graphviz DOT, or SVG drawn by kemu itself.
    #[arg(long, short, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
    Svg,
}

pub fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let graph = if Path::new(&args.what).is_file() {
        // A file that does not describe a lab is a configuration error (exit 2).
        let topo = Topology::load(Path::new(&args.what))
            .map_err(|e| super::exit::usage(format!("{e:#}")))?;
        model(&topo, None)
    } else if args.what.contains('/') || args.what.ends_with(".yaml") || args.what.ends_with(".yml")
    {
        return Err(super::exit::usage(format!(
            "cannot read topology file {}: no such file",
            args.what
        )));
    } else {
        let lab = LabName::parse(&args.what)?;
        let (dir, record) = LabRecord::open(&lab)?;
        let live = live(&dir, &record);
        model(&record.topology, Some(&live))
    };
    print!(
        "{}",
        match args.format {
            GraphFormat::Mermaid => mermaid(&graph),
            GraphFormat::Dot => dot(&graph),
            GraphFormat::Svg => svg(&graph),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The live part: proxy modes from the status view, pods from the API server. A lab whose
/// API server does not answer is still drawn, without pods, with a warning.
fn live(dir: &crate::lab::state::LabDir, record: &LabRecord) -> Live {
    let status = super::status::gather(dir, record);
    let proxy = status
        .hosts
        .iter()
        .filter_map(|h| Some((h.name.clone(), h.proxy.as_ref()?.shown.clone())))
        .collect();
    let pods = if record.api_port.is_some() {
        pods(record).unwrap_or_else(|e| {
            eprintln!("warning: drawn without pods: {e:#}");
            BTreeMap::new()
        })
    } else {
        BTreeMap::new() // --network-only: no cluster, no pods
    };
    Live { proxy, pods }
}

/// The pods bound to each node, read over the lab's network as `kemu reach` does.
fn pods(record: &LabRecord) -> anyhow::Result<BTreeMap<String, Vec<PodItem>>> {
    let topo = &record.topology;
    let master = topo.master();
    let url = format!("http://{}:{}", master.ip, crate::lab::forward::API_PORT);
    let ns = std::sync::Arc::new(crate::netns::NetNs::open(&topo.host_namespace(master))?);
    let rt = crate::client::agent_runtime()?;
    let client = {
        let _entered = rt.enter();
        crate::client::connect_in(&url, ns)?
    };
    let pods = rt
        .block_on(Api::<Pod>::all(client).list(&ListParams::default()))
        .with_context(|| format!("list the pods of lab {} at {url}", topo.name))?
        .items;
    let mut by_node: BTreeMap<String, Vec<PodItem>> = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue; // not scheduled yet
        };
        by_node.entry(node).or_default().push(PodItem {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        });
    }
    Ok(by_node)
}
