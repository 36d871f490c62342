//! `kemu conntrack LAB HOST|pod/NS/NAME [--service NS/NAME] [-o json]`: the conntrack table
//! of a host (or a pod), read through netfilter netlink inside its namespace, with the NAT
//! each entry did; `--service` keeps the entries of one Service (see
//! [`crate::observe::conntrack`]).

use std::process::ExitCode;

use clap::Args;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use super::output::Format;
use crate::lab::state::LabRecord;
use crate::observe::conntrack::{self, Entry, ServiceFilter};
use crate::observe::point::Point;
use crate::observe::{LabApi, pods};

/// Show a host's conntrack table.
#[derive(Debug, Args)]
pub struct ConntrackArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Host name or underlay IP, or pod/NAMESPACE/NAME for a pod's own table.
    pub host: String,
    /// Only the entries of this Service (NAMESPACE/NAME, or NAME in default): to its
    /// ClusterIPs and external IPs on its ports, to its node ports, to or from its endpoints.
    #[arg(long)]
    pub service: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub fn run(args: ConntrackArgs) -> anyhow::Result<ExitCode> {
    let point = Point::parse(&args.host).map_err(super::exit::usage)?;
    let service = args
        .service
        .as_deref()
        .map(|s| match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_string(), name.to_string()))
            }
            None if !s.is_empty() => Ok(("default".to_string(), s.to_string())),
            _ => Err(super::exit::usage(format!(
                "--service {s:?}: expected NAMESPACE/NAME"
            ))),
        })
        .transpose()?;
    let (_, record) = LabRecord::open(&args.lab)?;
    let needs_api = service.is_some() || matches!(point, Point::Pod { .. });
    let api = needs_api.then(|| LabApi::connect(&record)).transpose()?;
    let netns = match &point {
        Point::Host { dev: Some(_), .. } => {
            return Err(super::exit::usage(format!(
                "{}: a conntrack table belongs to a host or a pod, not a device",
                args.host
            )));
        }
        Point::Host { host, dev: None } => record.topology.host_namespace(record.host(host)?),
        Point::Pod { namespace, name } => {
            let api = api.as_ref().expect("connected for pods");
            let pod = api
                .rt
                .block_on(Api::<Pod>::namespaced(api.client.clone(), namespace).get_opt(name))?
                .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} not found"))?;
            pods::locate(&record, &pod)?.netns
        }
    };
    let filter = match (&service, &api) {
        (Some((ns, name)), Some(api)) => {
            let (svc, slices) = api.rt.block_on(async {
                let svc = Api::<Service>::namespaced(api.client.clone(), ns)
                    .get_opt(name)
                    .await?;
                let slices = Api::<EndpointSlice>::namespaced(api.client.clone(), ns)
                    .list(
                        &ListParams::default()
                            .labels(&format!("kubernetes.io/service-name={name}")),
                    )
                    .await?
                    .items;
                anyhow::Ok((svc, slices))
            })?;
            let svc = svc.ok_or_else(|| anyhow::anyhow!("service {ns}/{name} not found"))?;
            Some(ServiceFilter::of(&svc, &slices))
        }
        _ => None,
    };
    let mut entries = read_table(&netns)?;
    if let Some(filter) = &filter {
        entries.retain(|e| filter.matches(e));
    }
    conntrack::sort(&mut entries);
    match args.output {
        Format::Table => print!("{}", conntrack::render(&entries)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every entry (IPv4 and IPv6) of the table of network namespace `netns`.
pub fn read_table(netns: &str) -> anyhow::Result<Vec<Entry>> {
    let ns = crate::netns::NetNs::open(netns)?;
    let dumped = ns.run(|| {
        let mut nfnl = crate::proxy::nfnetlink::Nfnl::open()?;
        let mut all = nfnl.dump(false)?;
        all.extend(nfnl.dump(true)?);
        Ok(all)
    })?;
    Ok(dumped.iter().filter_map(|a| conntrack::parse(a)).collect())
}
