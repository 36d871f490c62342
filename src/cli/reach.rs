//! `kemu reach LAB [--expect FILE] [--count N] [--size BYTES] [--client-ip] [--watch]`: the
//! reachability matrix of a running lab (see [`crate::reach`]). Which pod answered comes from
//! the answer itself (a bare hostname, as agnhost's serve-hostname and UDP `hostname` send) or
//! else from the pods' access logs, where the probe's unique `User-Agent` shows up (the nginx
//! image logs every request, as the real one does, with the client address it saw).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, LogParams};

use super::output::Format;
use crate::lab::state::LabRecord;
use crate::netpol::{Model, Objects, Packet, Protocol};
use crate::reach::probe::{self, Answer, ProbeOptions};
use crate::reach::{Cell, Expectations, HostInfo, Try, hosts_without_pod, plan, render, summarise};

/// Probe every target from every source of a running lab.
#[derive(Debug, Args)]
pub struct ReachArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Compare with this file (lines `SOURCE-GLOB TARGET-GLOB reached|unreached`, the last
    /// matching line wins); exit 1 and show the differences when the matrix differs.
    #[arg(long)]
    pub expect: Option<std::path::PathBuf>,
    /// How long one probe may take.
    #[arg(long, default_value = "2s", value_parser = crate::topology::parse_duration_arg)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Do not start a probe pod (pause, deleted afterwards) on nodes that run no pod; those
    /// nodes then have no `pod-on/` source.
    #[arg(long)]
    pub no_probe_pods: bool,
    /// Probe every cell N times (new connections); a cell is reached only if all N answered,
    /// and shows which pods answered how often.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Make each request at least BYTES long, sent with DF set (MTU black holes): TCP gets a
    /// padding header, UDP a datagram of that size.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65000))]
    pub size: Option<u32>,
    /// Ask for the client address the backend saw (`GET /clientip`, UDP `clientip`, as
    /// agnhost netexec answers); nginx's access log shows it without asking.
    #[arg(long)]
    pub client_ip: bool,
    /// Probe again and again (every --interval), printing what changed, until interrupted.
    #[arg(long, conflicts_with = "expect")]
    pub watch: bool,
    /// Pause between rounds of --watch.
    #[arg(long, default_value = "1s", value_parser = crate::topology::parse_duration_arg)]
    pub interval: Duration,
    /// Explain instead of probing: may SRC connect to DST, and which NetworkPolicy and rule
    /// decide, as the nodes' policy tables do. SRC: a pod (`ns/name`, or `name` in default),
    /// `host/<host>` or an IP; DST: the same, or `svc/<ns>/<name>` (each backend), with
    /// `:PORT`, optionally `/udp` or `/sctp`.
    #[arg(long, num_args = 2, value_names = ["SRC", "DST"])]
    pub why: Option<Vec<String>>,
}

/// How long the access log of one pod may take to read.
const LOG_TIMEOUT: Duration = Duration::from_secs(1);

/// Label of the probe pods `reach` starts (and deletes).
const PROBE_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "kemu-reach");

pub fn run(args: ReachArgs) -> anyhow::Result<ExitCode> {
    let expectations = match &args.expect {
        Some(path) => {
            // A file that cannot be read or parsed is a usage error, found before any probe.
            let text = std::fs::read_to_string(path).map_err(|e| {
                super::exit::usage(format!("read expectation file {}: {e}", path.display()))
            })?;
            Some(
                Expectations::parse(&path.display().to_string(), &text)
                    .map_err(|e| super::exit::usage(format!("{e:#}")))?,
            )
        }
        None => None,
    };
    let (_, record) = LabRecord::open(&args.lab)?;
    let topo = &record.topology;
    record.api_port.with_context(|| {
        format!(
            "lab {} runs no API server (it was started with --network-only): reach needs the cluster; start it again without that flag",
            args.lab
        )
    })?;
    // The API server as the lab's hosts reach it: its own port, over the master's network.
    let master = topo.master();
    let url = format!("http://{}:{}", master.ip, crate::lab::forward::API_PORT);
    let ns = std::sync::Arc::new(crate::netns::NetNs::open(&topo.host_namespace(master))?);
    let rt = crate::client::agent_runtime()?;
    let client = {
        let _entered = rt.enter();
        crate::client::connect_in(&url, ns)?
    };
    let list = || {
        rt.block_on(async {
            let client = client.clone();
            let lp = ListParams::default();
            let nodes = Api::<Node>::all(client.clone()).list(&lp).await?.items;
            let services = Api::<Service>::all(client.clone()).list(&lp).await?.items;
            let pods = Api::<Pod>::all(client).list(&lp).await?.items;
            anyhow::Ok((nodes, services, pods))
        })
        .with_context(|| format!("read the objects of lab {} from {url}", args.lab))
    };
    let (mut nodes, mut services, mut pods) = list()?;
    let policy_objects = rt
        .block_on(policy_objects(client.clone()))
        .with_context(|| format!("read the NetworkPolicies of lab {} from {url}", args.lab))?;
    if let Some(why) = &args.why {
        let model = policy_model(&pods, &policy_objects);
        print!(
            "{}",
            explain(&record, (&pods, &services), &model, &why[0], &why[1])?
        );
        return Ok(ExitCode::SUCCESS);
    }

    let hosts: Vec<HostInfo> = topo
        .hosts
        .iter()
        .map(|h| HostInfo {
            name: h.name.clone(),
            netns: topo.host_namespace(h),
            cluster: h.is_minion(),
        })
        .collect();
    let mut probes = Vec::new();
    if !args.no_probe_pods {
        let lacking: Vec<String> = hosts_without_pod(&hosts, &pods)
            .iter()
            .map(|h| h.name.clone())
            .collect();
        if !lacking.is_empty() {
            probes = rt.block_on(start_probes(client.clone(), &lacking))?;
            (nodes, services, pods) = list()?;
        }
    }
    let opts = ProbeOptions {
        timeout: args.timeout,
        count: args.count as usize,
        size: args.size.map(|s| s as usize),
        client_ip: args.client_ip,
    };
    let lab_name = topo.name.clone();
    let pod_netns = |p: &Pod| {
        crate::kubelet::sandbox::pod_namespace(&lab_name, p.metadata.uid.as_deref().unwrap_or(""))
    };
    if args.watch {
        let result = watch(&rt, &client, &hosts, &list, &pod_netns, &opts, &args);
        if !probes.is_empty() {
            rt.block_on(delete_probes(client.clone(), &probes));
        }
        return result;
    }
    let (sources, targets) = plan(&hosts, &nodes, &services, &pods, pod_netns);
    for host in hosts.iter().filter(|h| h.cluster) {
        if !sources
            .iter()
            .any(|s| s.name == format!("pod-on/{}", host.name))
        {
            eprintln!(
                "note: no running pod on {}: the matrix has no pod source there",
                host.name
            );
        }
    }
    let cells = matrix(
        &rt,
        &client,
        &hosts,
        (&nodes, &services, &pods),
        &pod_netns,
        &opts,
    );
    if !probes.is_empty() {
        rt.block_on(delete_probes(client.clone(), &probes));
    }
    let mut cells = cells?;

    // What the policies make of the cells between pods and hosts (from the same model the
    // nodes' tables are rendered from).
    let model = policy_model(&pods, &policy_objects);
    if !model.pods.is_empty() {
        for (s, source) in sources.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let cell = &mut cells[s * targets.len() + t];
                cell.policy = cell_note(&record, &pods, &model, source, target);
            }
        }
    }
    let differences = expectations.as_ref().map(|e| e.differences(&cells));
    match args.output {
        Format::Table => print!("{}", render(&cells)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&matrix_json(
                &cells,
                args.expect.as_deref(),
                differences.as_deref()
            ))?
        ),
    }
    if let (Some(path), Some(differences)) = (&args.expect, &differences) {
        if !differences.is_empty() {
            eprintln!(
                "\nthe matrix differs from {} in {} cell(s):",
                path.display(),
                differences.len()
            );
            for d in differences {
                eprintln!("  {d}");
            }
            return Ok(ExitCode::from(super::exit::FAILED));
        }
        eprintln!("\nthe matrix is as expected");
    }
    Ok(ExitCode::SUCCESS)
}

/// `-o json`: the cells, the count the table ends with, and with `--expect` the comparison
/// (the same lines the table's run prints on stderr).
fn matrix_json(
    cells: &[Cell],
    expect: Option<&std::path::Path>,
    differences: Option<&[String]>,
) -> serde_json::Value {
    let reached = cells.iter().filter(|c| c.outcome.reached()).count();
    serde_json::json!({
        "cells": cells,
        "reached": reached,
        "total": cells.len(),
        "expectation": expect.zip(differences).map(|(file, d)| serde_json::json!({
            "file": file,
            "asExpected": d.is_empty(),
            "differences": d,
        })),
    })
}

/// The pod whose access log shows each probe's `User-Agent`, and the client address the log
/// line starts with (nginx's `$remote_addr`): user agent → (pod name, client).
async fn served_by(
    client: kube::Client,
    pods: &[Pod],
    run_id: &str,
) -> HashMap<String, (String, Option<String>)> {
    let mut out = HashMap::new();
    let marker = format!("kemu-reach/{run_id}-");
    // The log line is written right after the answer: give it a moment to reach the file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fetches = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .flat_map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let containers: Vec<String> = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| c.name.clone())
                .collect();
            let client = client.clone();
            containers.into_iter().map(move |container| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let (ns, name) = (ns.clone(), name.clone());
                async move {
                    let lp = LogParams {
                        container: Some(container),
                        since_seconds: Some(120),
                        ..Default::default()
                    };
                    let shown = if ns == "default" {
                        name.clone()
                    } else {
                        format!("{ns}/{name}")
                    };
                    // A pod on a node that cannot be reached (a link down, a partition)
                    // must not hold the matrix up: its log is left out.
                    let log = tokio::time::timeout(LOG_TIMEOUT, api.logs(&name, &lp)).await;
                    (shown, log.ok().and_then(Result::ok).unwrap_or_default())
                }
            })
        });
    for (pod, log) in futures::future::join_all(fetches).await {
        for line in log.lines() {
            if let Some(at) = line.find(&marker) {
                let agent: String = line[at..]
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                let peer = line
                    .split_whitespace()
                    .next()
                    .filter(|w| w.parse::<std::net::IpAddr>().is_ok())
                    .map(String::from);
                out.insert(agent, (pod.clone(), peer));
            }
        }
    }
    out
}

/// Start a pause pod on each of `nodes` and wait until they run; returns their names.
async fn start_probes(client: kube::Client, nodes: &[String]) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut names = Vec::new();
    for node in nodes {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "kemu-reach-",
                "labels": {PROBE_LABEL.0: PROBE_LABEL.1},
            },
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}],
            }
        }))?;
        let created = api
            .create(&Default::default(), &pod)
            .await
            .with_context(|| format!("start a probe pod on {node}"))?;
        names.push(created.metadata.name.unwrap_or_default());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for name in &names {
        loop {
            let pod = api.get(name).await?;
            let status = pod.status.unwrap_or_default();
            if status.phase.as_deref() == Some("Running") && status.pod_ip.is_some() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                delete_probes(client.clone(), &names).await;
                anyhow::bail!(
                    "probe pod {name} did not start within 30 s (see `kubectl describe pod {name}`; --no-probe-pods skips them)"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(names)
}

/// Delete the probe pods at once (no grace period).
async fn delete_probes(client: kube::Client, names: &[String]) {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for name in names {
        if let Err(e) = api.delete(name, &dp).await {
            eprintln!("warning: delete probe pod {name}: {e}");
        }
    }
}

/// The objects `reach` lists: nodes, services, pods.
type Listed = (Vec<Node>, Vec<Service>, Vec<Pod>);

/// The objects `reach` plans from: nodes, services, pods.
type Listing<'a> = (&'a [Node], &'a [Service], &'a [Pod]);

/// One matrix: plan, probe, and tell which pod answered each try and whom it saw.
fn matrix(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    hosts: &[HostInfo],
    (nodes, services, pods): Listing<'_>,
    pod_netns: &dyn Fn(&Pod) -> String,
    opts: &ProbeOptions,
) -> anyhow::Result<Vec<Cell>> {
    let (sources, targets) = plan(hosts, nodes, services, pods, pod_netns);
    let run_id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let answers = probe::probe_all(&sources, &targets, &run_id, opts)?;
    // Tries answered over HTTP without a name in the answer: the access logs tell.
    let unknown = targets.iter().enumerate().any(|(t, target)| {
        !target.udp
            && answers.iter().any(|row| {
                row[t].iter().any(|a| match a {
                    Answer::Bytes(text) => probe::hostname_in(text).is_none() || opts.client_ip,
                    Answer::Failed(_) => false,
                })
            })
    });
    let served = if unknown {
        rt.block_on(served_by(client.clone(), pods, &run_id))
    } else {
        HashMap::new()
    };
    let mut cells = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        for (t, target) in targets.iter().enumerate() {
            let tries: Vec<Try> = answers[s][t]
                .iter()
                .enumerate()
                .map(|(i, answer)| match answer {
                    Answer::Bytes(text) => {
                        let logged = served.get(&probe::user_agent(&run_id, s, t, i));
                        let named = if opts.client_ip {
                            None
                        } else {
                            probe::hostname_in(text).map(String::from)
                        };
                        Try {
                            answer: Ok(named.or_else(|| logged.map(|(pod, _)| pod.clone()))),
                            client: probe::client_in(text)
                                .or_else(|| logged.and_then(|(_, peer)| peer.clone())),
                        }
                    }
                    Answer::Failed(why) => Try {
                        answer: Err(why.clone()),
                        client: None,
                    },
                })
                .collect();
            let (outcome, tries, client_addr) = summarise(&tries);
            cells.push(Cell {
                source: source.name.clone(),
                target: target.name.clone(),
                addr: target.addr,
                outcome,
                tries,
                client: client_addr,
                policy: None,
            });
        }
    }
    Ok(cells)
}

/// Set by SIGINT/SIGTERM while `--watch` runs: stop after the current round.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `--watch`: a matrix per round; the first in full, then the cells whose result changed,
/// each round headed by its time and count. JSON: one object per round and line.
fn watch(
    rt: &tokio::runtime::Runtime,
    client: &kube::Client,
    hosts: &[HostInfo],
    list: &dyn Fn() -> anyhow::Result<Listed>,
    pod_netns: &dyn Fn(&Pod) -> String,
    opts: &ProbeOptions,
    args: &ReachArgs,
) -> anyhow::Result<ExitCode> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = nix::sys::signal::SigHandler::Handler(on_stop);
        let action = nix::sys::signal::SigAction::new(
            handler,
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &action)?;
        nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action)?;
    }
    let mut previous: HashMap<(String, String), Cell> = HashMap::new();
    let mut first = true;
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let (nodes, services, pods) = list()?;
        let cells = matrix(
            rt,
            client,
            hosts,
            (&nodes, &services, &pods),
            pod_netns,
            opts,
        )?;
        let reached = cells.iter().filter(|c| c.outcome.reached()).count();
        let time = jiff::Timestamp::now().strftime("%H:%M:%S%.3f").to_string();
        let changed: Vec<Cell> = cells
            .iter()
            .filter(|c| {
                let key = (c.source.clone(), c.target.clone());
                previous
                    .get(&key)
                    .is_none_or(|p| p.outcome.reached() != c.outcome.reached() || p.addr != c.addr)
            })
            .cloned()
            .collect();
        match args.output {
            Format::Json => println!(
                "{}",
                serde_json::json!({"time": time, "reached": reached, "total": cells.len(), "changed": changed})
            ),
            Format::Table => {
                println!("== {time}  {reached} of {} reached", cells.len());
                if first {
                    print!("{}", render(&cells));
                } else if !changed.is_empty() {
                    print!("{}", render(&changed));
                }
            }
        }
        previous = cells
            .into_iter()
            .map(|c| ((c.source.clone(), c.target.clone()), c))
            .collect();
        first = false;
        let deadline = std::time::Instant::now() + args.interval;
        while std::time::Instant::now() < deadline
            && !STOP.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Namespaces and NetworkPolicies of the cluster (the model's other inputs).
async fn policy_objects(
    client: kube::Client,
) -> anyhow::Result<(Vec<Namespace>, Vec<NetworkPolicy>)> {
    let lp = ListParams::default();
    let namespaces = Api::<Namespace>::all(client.clone()).list(&lp).await?.items;
    let policies = Api::<NetworkPolicy>::all(client).list(&lp).await?.items;
    Ok((namespaces, policies))
}

/// The whole cluster's policy model.
fn policy_model(
    pods: &[Pod],
    (namespaces, policies): &(Vec<Namespace>, Vec<NetworkPolicy>),
) -> Model {
    let pods: Vec<&Pod> = pods.iter().collect();
    let namespaces: Vec<&Namespace> = namespaces.iter().collect();
    let policies: Vec<&NetworkPolicy> = policies.iter().collect();
    crate::netpol::model::build(
        Objects {
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
        },
        None,
    )
}

/// An end of a connection `--why` explains.
struct End {
    /// How it is shown: `x/a (172.16.0.2 on 192.168.0.201)`.
    shown: String,
    ip: Ipv4Addr,
    /// The node a pod runs on, or the host itself.
    node: Option<String>,
    host: bool,
}

/// `ns/name`, `name`, `pod/ns/name`, `host/<host>` or an IP.
fn resolve_end(record: &LabRecord, pods: &[Pod], text: &str) -> anyhow::Result<End> {
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        let pod = pods.iter().find(|p| pod_ip(p) == Some(ip));
        return Ok(End {
            shown: match pod {
                Some(p) => format!("{} ({ip})", pod_key(p)),
                None => ip.to_string(),
            },
            ip,
            node: pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
            host: false,
        });
    }
    if let Some(host) = text.strip_prefix("host/") {
        let host = record.host(host)?;
        return Ok(End {
            shown: format!("host {} ({})", host.name, host.ip),
            ip: host.ip,
            node: Some(host.name.clone()),
            host: true,
        });
    }
    let key = text.strip_prefix("pod/").unwrap_or(text);
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    let pod = pods
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .ok_or_else(|| {
            super::exit::usage(format!(
                "no pod {ns}/{name} in the lab (give ns/name, host/<host> or an IP)"
            ))
        })?;
    let ip =
        pod_ip(pod).ok_or_else(|| anyhow::anyhow!("pod {ns}/{name} has no IPv4 address yet"))?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    Ok(End {
        shown: format!(
            "{ns}/{name} ({ip} on {})",
            node.as_deref().unwrap_or("no node")
        ),
        ip,
        node,
        host: false,
    })
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// `kemu reach --why SRC DST`.
fn explain(
    record: &LabRecord,
    (pods, services): (&[Pod], &[Service]),
    model: &Model,
    src: &str,
    dst: &str,
) -> anyhow::Result<String> {
    let (dst, proto) = match dst.rsplit_once('/') {
        Some((rest, p)) if matches!(p, "tcp" | "udp" | "sctp") => (rest, p),
        _ => (dst, "tcp"),
    };
    let protocol = Protocol::from_api(&proto.to_uppercase()).expect("tcp, udp or sctp");
    let (dst, port) = dst
        .rsplit_once(':')
        .and_then(|(d, p)| Some((d, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            super::exit::usage(format!(
                "--why: the destination {dst:?} needs a port (e.g. x/a:80, svc/x/web:80 or 172.16.0.2:80/udp)"
            ))
        })?;
    let src = resolve_end(record, pods, src)?;
    let Some(service) = dst.strip_prefix("svc/") else {
        let dst = resolve_end(record, pods, dst)?;
        return Ok(explain_pair(model, &src, &dst, protocol, port, ""));
    };
    // A Service: each backend as the proxy's DNAT sends the connection to it.
    let (ns, name) = service.split_once('/').unwrap_or(("default", service));
    let svc = services
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
        })
        .ok_or_else(|| super::exit::usage(format!("no Service {ns}/{name} in the lab")))?;
    let spec = svc.spec.clone().unwrap_or_default();
    let svc_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| {
            p.port == i32::from(port)
                && Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP")) == Some(protocol)
        })
        .ok_or_else(|| {
            super::exit::usage(format!("Service {ns}/{name} has no {protocol} port {port}"))
        })?;
    let selector = crate::controllers::util::Selector::from_map(spec.selector.as_ref());
    let mut out = format!("{} -> Service {ns}/{name} {protocol}/{port}:\n", src.shown);
    let mut backends = 0;
    for pod in pods.iter().filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns)
            && p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && selector.matches(p.metadata.labels.as_ref())
    }) {
        let target = match &svc_port.target_port {
            None => Some(port),
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(named)) => pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(named.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        };
        let (Some(target), Ok(dst)) = (target, resolve_end(record, pods, &pod_key(pod))) else {
            continue;
        };
        backends += 1;
        out.push_str(&explain_pair(model, &src, &dst, protocol, target, "  "));
    }
    if backends == 0 {
        out.push_str("  no running backend\n");
    }
    Ok(out)
}

/// The verdict on `src` → `dst` and both ends' decisions, each line after `indent`.
fn explain_pair(
    model: &Model,
    src: &End,
    dst: &End,
    protocol: Protocol,
    port: u16,
    indent: &str,
) -> String {
    let verdict = model.evaluate(Packet {
        src: src.ip,
        dst: dst.ip,
        protocol,
        port,
    });
    // The node's own traffic to its pods passes (`meta skuid 0 accept`, as upstream).
    let from_own_node = src.host && src.node.is_some() && src.node == dst.node;
    let allowed = from_own_node || verdict.allowed();
    let mut out = if indent.is_empty() {
        format!("{} -> {} {protocol}/{port}: ", src.shown, dst.shown)
    } else {
        format!("{indent}-> {} {protocol}/{port}: ", dst.shown)
    };
    out.push_str(if allowed { "allowed\n" } else { "denied\n" });
    let who = |pod: &Option<String>| pod.clone().unwrap_or_else(|| "a non-pod address".into());
    out.push_str(&format!(
        "{indent}  egress of {}: {}\n",
        who(&verdict.src_pod),
        verdict.egress
    ));
    if from_own_node {
        out.push_str(&format!(
            "{indent}  ingress of {}: allowed: traffic from the pod's own node always passes\n",
            who(&verdict.dst_pod)
        ));
    } else {
        out.push_str(&format!(
            "{indent}  ingress of {}: {}\n",
            who(&verdict.dst_pod),
            verdict.ingress
        ));
    }
    out
}

/// The policy note of a matrix cell to a pod address (`pod/...` targets).
fn cell_note(
    record: &LabRecord,
    pods: &[Pod],
    model: &Model,
    source: &crate::reach::Source,
    target: &crate::reach::Target,
) -> Option<String> {
    if !target.name.starts_with("pod/") {
        return None;
    }
    let std::net::IpAddr::V4(dst) = target.addr.ip() else {
        return None;
    };
    let src = match (&source.pod, source.name.strip_prefix("host/")) {
        (Some(pod), _) => resolve_end(record, pods, pod).ok()?,
        (None, Some(host)) => resolve_end(record, pods, &format!("host/{host}")).ok()?,
        _ => return None,
    };
    let dst_node = pods
        .iter()
        .find(|p| pod_ip(p) == Some(dst))
        .and_then(|p| p.spec.as_ref()?.node_name.clone());
    if src.host && src.node == dst_node {
        return None;
    }
    model
        .evaluate(Packet {
            src: src.ip,
            dst,
            protocol: Protocol::Tcp,
            port: target.addr.port(),
        })
        .note()
}
