//! `kemu link`: change one link's faults (state, MTU, impairments) and record them.

use super::engine::{self, LinkTarget};
use super::kernel;
use super::spec::Impairment;
use super::state::{FaultState, LinkFault, Offloads};
use crate::lab::state::{LabDir, LabRecord};
use crate::netns::NetNs;

/// What one `kemu link` asks for; `None`s leave the link's current setting alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// `Some(true)` for `--down`, `Some(false)` for `--up`.
    pub down: Option<bool>,
    /// `Some(0)` gives the MTU back.
    pub mtu: Option<u32>,
    pub impairment: Impairment,
    /// Remove every fault of the link.
    pub clear: bool,
}

/// The fault the link should have after `change` (pure).
pub fn plan(old: &LinkFault, change: &LinkChange) -> Result<LinkFault, String> {
    let mut new = old.clone();
    if change.clear {
        new.down = false;
        new.mtu = None;
        new.impairment = Impairment::default();
        return Ok(new);
    }
    if let Some(down) = change.down {
        new.down = down;
    }
    match change.mtu {
        Some(0) => new.mtu = None,
        Some(m) if !(68..=65535).contains(&m) => {
            return Err(format!("--mtu {m}: an IPv4 link's MTU is 68 to 65535"));
        }
        Some(m) => new.mtu = Some(m),
        None => {}
    }
    new.impairment = old.impairment.merged(&change.impairment);
    new.impairment.check()?;
    Ok(new)
}

/// Apply `change` to `host:dev` and record the result; returns the link's faults now.
pub fn change(
    dir: &LabDir,
    record: &LabRecord,
    state: &mut FaultState,
    host: &str,
    dev: &str,
    change: &LinkChange,
) -> anyhow::Result<LinkFault> {
    let topo = &record.topology;
    let h = record.host(host)?;
    let ns = NetNs::open(&topo.host_namespace(h))?;
    let info = kernel::link(&ns, dev)?;
    let old = state.link(&h.name, dev).cloned().unwrap_or(LinkFault {
        host: h.name.clone(),
        dev: dev.to_string(),
        ..Default::default()
    });
    let want = plan(&old, change).map_err(anyhow::Error::msg)?;
    let target = LinkTarget {
        dir,
        host: &h.name,
        ns: &ns,
        dev,
        info: &info,
        binary: &record.binary,
    };
    let mut now = old.clone();
    // Whatever happens below, record what is in place.
    let result = apply(record, &target, &want, &mut now);
    state.links.retain(|l| !(l.host == h.name && l.dev == dev));
    if !now.is_clear() {
        state.links.push(now.clone());
    }
    state.save(dir)?;
    result.map(|()| now)
}

fn apply(
    record: &LabRecord,
    target: &LinkTarget,
    want: &LinkFault,
    now: &mut LinkFault,
) -> anyhow::Result<()> {
    let ns = target.ns;
    let dev = target.dev;
    if want.impairment != now.impairment {
        if let Some(old) = now.engine.take() {
            engine::clear(target, &old)?;
        }
        now.impairment = Default::default();
        if !want.impairment.is_empty() {
            now.engine = Some(engine::apply(target, &want.impairment)?);
            now.impairment = want.impairment.clone();
        }
    }
    if want.mtu != now.mtu {
        match want.mtu {
            Some(mtu) => {
                if now.previous_mtu.is_none() {
                    now.previous_mtu = Some(target.info.mtu);
                    now.offloads = offloads_off(record, target)?;
                }
                kernel::set_mtu(ns, dev, mtu)?;
                now.mtu = Some(mtu);
            }
            None => {
                if let Some(prev) = now.previous_mtu {
                    kernel::set_mtu(ns, dev, prev)?;
                }
                for o in std::mem::take(&mut now.offloads) {
                    let ons = NetNs::open(&o.netns)?;
                    let features: Vec<String> = o.features.iter().map(|f| f.0.clone()).collect();
                    kernel::offloads_on(&ons, &o.dev, &features)?;
                }
                now.previous_mtu = None;
                now.mtu = None;
            }
        }
    }
    if want.down != now.down {
        kernel::set_up(ns, dev, !want.down)?;
        now.down = want.down;
    }
    Ok(())
}

/// Switch the offloads off along the link's path: every link of the host (its pods' veths,
/// the pod bridge, the overlay device) and, for the underlay device, its peer on the fabric.
/// Returns what was on, to switch on again.
fn offloads_off(record: &LabRecord, target: &LinkTarget) -> anyhow::Result<Vec<Offloads>> {
    let topo = &record.topology;
    let mut devices: Vec<(String, String)> = kernel::links(target.ns)?
        .into_iter()
        .filter(|l| l.ifname != "lo")
        .map(|l| (target.ns.name().to_string(), l.ifname))
        .collect();
    if target.dev == crate::overlay::UNDERLAY_DEVICE {
        devices.push((
            topo.fabric_namespace(),
            crate::plan::fabric_port_name(topo.name.as_str(), target.host),
        ));
    }
    let mut out = Vec::new();
    for (netns, dev) in devices {
        let ns = NetNs::open(&netns)?;
        let on = kernel::offloads_off(&ns, &dev)?;
        if !on.is_empty() {
            out.push(Offloads {
                netns,
                dev,
                features: on.into_iter().map(|f| (f, true)).collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::spec::{parse_delay, parse_percent};

    #[test]
    fn changes_merge_and_clear_removes_all() {
        let old = LinkFault {
            host: "a".into(),
            dev: "eth0".into(),
            down: true,
            mtu: Some(1400),
            ..Default::default()
        };
        let add_delay = LinkChange {
            down: Some(false),
            impairment: Impairment {
                delay: Some(parse_delay("10ms").unwrap()),
                ..Default::default()
            },
            ..Default::default()
        };
        let new = plan(&old, &add_delay).unwrap();
        assert!(!new.down);
        assert_eq!(new.mtu, Some(1400));
        assert_eq!(new.impairment.delay, add_delay.impairment.delay);
        let cleared = plan(
            &new,
            &LinkChange {
                clear: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(cleared.is_clear());
        let bad_mtu = LinkChange {
            mtu: Some(20),
            ..Default::default()
        };
        assert!(plan(&old, &bad_mtu).is_err());
        let reorder_alone = LinkChange {
            impairment: Impairment {
                reorder: Some(parse_percent("5%").unwrap()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(plan(&old, &reorder_alone).is_err());
    }
}
