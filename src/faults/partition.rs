//! `kemu partition` and `kemu heal`: hosts cut from others, as one nftables table per host
//! namespace (`inet kemu-partition`) rendered from every partition in force.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use super::kernel;
use super::render::{self, PARTITION_TABLE, PartitionRule};
use super::state::{FaultState, Partition, Plane};
use crate::lab::state::LabRecord;
use crate::netns::NetNs;
use crate::topology::Topology;

/// A partition with its host names resolved (names or underlay IPs) and the other side
/// defaulted to every other host.
pub fn resolve(
    record: &LabRecord,
    hosts: &[String],
    from: &[String],
    plane: Plane,
    one_way: bool,
) -> anyhow::Result<Partition> {
    anyhow::ensure!(!hosts.is_empty(), "name at least one host to cut off");
    let names = |keys: &[String]| -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for k in keys {
            let name = record.host(k)?.name.clone();
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    };
    let hosts = names(hosts)?;
    let from = if from.is_empty() {
        record
            .topology
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| !hosts.contains(n))
            .collect()
    } else {
        names(from)?
    };
    if let Some(both) = hosts.iter().find(|h| from.contains(h)) {
        anyhow::bail!("{both} is on both sides of the partition");
    }
    anyhow::ensure!(!from.is_empty(), "there is no other host to cut them from");
    Ok(Partition {
        hosts,
        from,
        plane,
        one_way,
    })
}

/// A host's addresses: its underlay address and its pod subnet.
fn addresses(topo: &Topology, host: &str) -> Vec<Ipv4Net> {
    topo.hosts
        .iter()
        .filter(|h| h.name == host)
        .flat_map(|h| {
            let ip = Ipv4Net::new(h.ip, 32).expect("/32");
            std::iter::once(ip).chain(h.subnet)
        })
        .collect()
}

/// Each host's partition rules: a partition's rules go in its `hosts`' namespaces, which see
/// every packet between them and the other side (pods' packets included: they are routed
/// through their host). Hosts of the lab without partitions map to no rules.
pub fn host_rules(
    topo: &Topology,
    partitions: &[Partition],
) -> BTreeMap<String, Vec<PartitionRule>> {
    let mut out: BTreeMap<String, Vec<PartitionRule>> = topo
        .hosts
        .iter()
        .map(|h| (h.name.clone(), Vec::new()))
        .collect();
    for p in partitions {
        let peers: Vec<Ipv4Net> = p.from.iter().flat_map(|f| addresses(topo, f)).collect();
        for h in &p.hosts {
            out.entry(h.clone()).or_default().push(PartitionRule {
                peers: peers.clone(),
                plane: p.plane,
                one_way: p.one_way,
            });
        }
    }
    out
}

/// Make every host's partition table match `state.partitions`, touching only the hosts
/// named in `touched` (the hosts of the partitions added or removed).
pub fn sync(
    record: &LabRecord,
    state: &FaultState,
    touched: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let topo = &record.topology;
    let api = (topo.master().ip, crate::lab::forward::API_PORT);
    let rules = host_rules(topo, &state.partitions);
    for name in touched {
        let Some(host) = topo.hosts.iter().find(|h| &h.name == name) else {
            continue;
        };
        let ns = NetNs::open(&topo.host_namespace(host))?;
        let text = match render::partition_table(&rules[name], api) {
            Some(table) => render::replace_table(PARTITION_TABLE, &table),
            None => render::delete_table(PARTITION_TABLE),
        };
        kernel::nft(&ns, &text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_go_to_the_cut_hosts_with_the_other_side_addresses() {
        let topo = crate::topology::parse("seed.yaml", include_str!("../../topologies/seed.yaml"))
            .unwrap();
        let p = Partition {
            hosts: vec!["192.168.0.202".into()],
            from: vec!["192.168.0.201".into(), "client".into()],
            plane: Plane::Data,
            one_way: false,
        };
        let rules = host_rules(&topo, &[p]);
        crate::testing::snapshot_settings().bind(|| insta::assert_debug_snapshot!(rules));
    }
}
