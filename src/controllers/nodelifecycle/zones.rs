//! Zones and disruption, as kube's node lifecycle controller sees them (`ComputeZoneState`,
//! `handleDisruption`, `setLimiterInZone`). Pure.
//!
//! Nodes are grouped into zones by their region and zone labels. A zone where every node is
//! not Ready is in *full disruption*; one where more than two nodes and at least
//! `--unhealthy-zone-threshold` of them are not Ready is in *partial disruption*. Each zone's
//! taint queue runs at a rate that follows its state. When every zone is in full disruption at
//! once the controller is in *master disruption mode*: what failed is far more likely the control
//! plane's view (or the network under it) than every node, so it removes the `NoExecute` taints
//! and stops tainting; when it leaves that mode it restarts every node's grace period.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

/// Nodes with this label are left out of the zone computation.
pub const EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";

/// The eviction-rate settings (kube-controller-manager flags of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// `--node-eviction-rate`: nodes tainted per second in a zone that is not disrupted.
    pub eviction_rate: f64,
    /// `--secondary-node-eviction-rate`: the rate in a partially disrupted zone of a large
    /// cluster.
    pub secondary_eviction_rate: f64,
    /// `--large-cluster-size-threshold`: a smaller partially disrupted zone stops tainting.
    pub large_cluster_size_threshold: usize,
    /// `--unhealthy-zone-threshold`: the fraction of not-Ready nodes (at least 3) that makes a
    /// zone partially disrupted.
    pub unhealthy_zone_threshold: f64,
}

impl Default for Rates {
    /// kube-controller-manager's defaults.
    fn default() -> Rates {
        Rates {
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_size_threshold: 50,
            unhealthy_zone_threshold: 0.55,
        }
    }
}

/// The state of a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Seen for the first time.
    Initial,
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// The zone of a node (kube's `GetZoneKey`): `""` without region and zone labels.
pub fn zone_key(node: &Node) -> String {
    let Some(labels) = node.metadata.labels.as_ref() else {
        return String::new();
    };
    let get = |beta: &str, ga: &str| {
        labels
            .get(beta)
            .or_else(|| labels.get(ga))
            .cloned()
            .unwrap_or_default()
    };
    let zone = get(
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/zone",
    );
    let region = get(
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/region",
    );
    if region.is_empty() && zone.is_empty() {
        return String::new();
    }
    // The NUL keeps a colon in either name from making two zones one.
    format!("{region}:\0:{zone}")
}

/// Ready and not-Ready nodes of one zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneCount {
    pub ready: usize,
    pub not_ready: usize,
}

impl ZoneCount {
    pub fn size(&self) -> usize {
        self.ready + self.not_ready
    }
}

/// Count the nodes of each zone; a node is Ready when its Ready condition is `True` (a missing
/// condition counts as not Ready). Nodes labelled [`EXCLUDE_DISRUPTION`] are left out.
pub fn count<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeMap<String, ZoneCount> {
    let mut zones: BTreeMap<String, ZoneCount> = BTreeMap::new();
    for node in nodes {
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_DISRUPTION));
        if excluded {
            continue;
        }
        let zone = zones.entry(zone_key(node)).or_default();
        if super::health::ready_status(node).as_deref() == Some("True") {
            zone.ready += 1;
        } else {
            zone.not_ready += 1;
        }
    }
    zones
}

/// The state a zone's counts put it in (`ComputeZoneState`).
pub fn zone_state(count: ZoneCount, unhealthy_zone_threshold: f64) -> ZoneState {
    let ZoneCount { ready, not_ready } = count;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2
        && not_ready as f64 / (ready + not_ready) as f64 >= unhealthy_zone_threshold
    {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// The tainting rate of a zone of `size` nodes in `state` (`setLimiterInZone`): a partially
/// disrupted zone slows down to the secondary rate if it is large, else stops; a fully
/// disrupted zone (while others are not) taints at the normal rate.
pub fn zone_rate(state: ZoneState, size: usize, rates: &Rates) -> f64 {
    match state {
        ZoneState::Initial | ZoneState::Normal | ZoneState::FullDisruption => rates.eviction_rate,
        ZoneState::PartialDisruption if size > rates.large_cluster_size_threshold => {
            rates.secondary_eviction_rate
        }
        ZoneState::PartialDisruption => 0.0,
    }
}

/// What a new look at the zones calls for.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing changed.
    Nothing,
    /// Every zone just went into full disruption: remove every `NoExecute` condition taint,
    /// empty the taint queues and stop them.
    EnterMasterDisruption,
    /// Some node is Ready again: every node's grace period starts again now, and every zone
    /// taints at the rate of its state.
    ExitMasterDisruption(BTreeMap<String, (ZoneState, f64)>),
    /// These zones changed state: their rates change.
    Zones(BTreeMap<String, (ZoneState, f64)>),
}

/// The zone states the controller remembers between passes.
#[derive(Debug, Clone, Default)]
pub struct Disruption {
    states: BTreeMap<String, ZoneState>,
}

impl Disruption {
    /// In master disruption mode: there are zones, all in full disruption.
    pub fn master_disruption(&self) -> bool {
        !self.states.is_empty()
            && self
                .states
                .values()
                .all(|s| *s == ZoneState::FullDisruption)
    }

    pub fn state(&self, zone: &str) -> Option<ZoneState> {
        self.states.get(zone).copied()
    }

    /// Take in the current counts (`handleDisruption`).
    pub fn update(&mut self, zones: &BTreeMap<String, ZoneCount>, rates: &Rates) -> Step {
        let new: BTreeMap<String, ZoneState> = zones
            .iter()
            .map(|(z, c)| (z.clone(), zone_state(*c, rates.unhealthy_zone_threshold)))
            .collect();
        let all_are = new.values().all(|s| *s == ZoneState::FullDisruption);
        for zone in zones.keys() {
            self.states
                .entry(zone.clone())
                .or_insert(ZoneState::Initial);
        }
        self.states.retain(|z, _| zones.contains_key(z));
        let all_were = self
            .states
            .values()
            .all(|s| *s == ZoneState::FullDisruption);
        let with_rates = |states: BTreeMap<String, ZoneState>| {
            states
                .into_iter()
                .map(|(z, s)| {
                    let rate = zone_rate(s, zones[&z].size(), rates);
                    (z, (s, rate))
                })
                .collect()
        };
        match (all_were, all_are) {
            (true, true) => Step::Nothing,
            (false, true) => {
                for s in self.states.values_mut() {
                    *s = ZoneState::FullDisruption;
                }
                Step::EnterMasterDisruption
            }
            (true, false) => {
                self.states = new.clone();
                Step::ExitMasterDisruption(with_rates(new))
            }
            (false, false) => {
                let changed: BTreeMap<String, ZoneState> = new
                    .into_iter()
                    .filter(|(z, s)| self.states.get(z) != Some(s))
                    .collect();
                self.states.extend(changed.clone());
                if changed.is_empty() {
                    Step::Nothing
                } else {
                    Step::Zones(with_rates(changed))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ZoneState::*;
    use serde_json::json;

    #[test]
    fn zone_states_and_rates() {
        let rates = Rates::default();
        // (ready, not ready) → state, rate
        let table: [((usize, usize), ZoneState, f64); 10] = [
            ((3, 0), Normal, 0.1),
            ((0, 1), FullDisruption, 0.1),
            ((0, 3), FullDisruption, 0.1),
            ((1, 2), Normal, 0.1),
            // More than two not Ready and at least 55 %.
            ((2, 3), PartialDisruption, 0.0),
            ((3, 3), Normal, 0.1),
            ((45, 55), PartialDisruption, 0.01),
            ((46, 54), Normal, 0.1),
            // 50 nodes is not larger than the threshold.
            ((20, 30), PartialDisruption, 0.0),
            ((0, 0), Normal, 0.1),
        ];
        for ((ready, not_ready), state, rate) in table {
            let c = ZoneCount { ready, not_ready };
            let got = zone_state(c, rates.unhealthy_zone_threshold);
            assert_eq!(got, state, "{c:?}");
            assert_eq!(zone_rate(got, c.size(), &rates), rate, "{c:?}");
        }
    }

    #[test]
    fn zone_keys_and_counts() {
        let node = |name: &str, labels: serde_json::Value, ready: Option<&str>| -> Node {
            let conditions = match ready {
                Some(s) => json!([{"type": "Ready", "status": s}]),
                None => json!([]),
            };
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"conditions": conditions}}))
            .unwrap()
        };
        let nodes = [
            node("a", json!({}), Some("True")),
            node("b", json!({}), Some("Unknown")),
            node("c", json!({}), None),
            node(
                "d",
                json!({"topology.kubernetes.io/zone": "z1", "topology.kubernetes.io/region": "r"}),
                Some("False"),
            ),
            // The beta label wins over the GA one, as in kube.
            node(
                "e",
                json!({"failure-domain.beta.kubernetes.io/zone": "z1", "topology.kubernetes.io/zone": "z2",
                    "topology.kubernetes.io/region": "r"}),
                Some("True"),
            ),
            node(
                "f",
                json!({"topology.kubernetes.io/zone": "z3"}),
                Some("True"),
            ),
            node("g", json!({EXCLUDE_DISRUPTION: ""}), Some("False")),
        ];
        let zones = count(&nodes);
        let ready = |ready, not_ready| ZoneCount { ready, not_ready };
        assert_eq!(
            zones,
            BTreeMap::from([
                (String::new(), ready(1, 2)),
                (":\0:z3".to_string(), ready(1, 0)),
                ("r:\0:z1".to_string(), ready(1, 1)),
            ])
        );
    }

    /// Zone name, ready nodes, not-Ready nodes.
    type Counts<'a> = &'a [(&'a str, usize, usize)];

    /// Each step: the zones' counts, what the controller must do, and whether it is then in
    /// master disruption mode.
    fn walk(steps: &[(Counts<'_>, Step, bool)]) {
        let rates = Rates::default();
        let mut d = Disruption::default();
        for (i, (zones, want, master)) in steps.iter().enumerate() {
            let zones: BTreeMap<String, ZoneCount> = zones
                .iter()
                .map(|(z, ready, not_ready)| {
                    let c = ZoneCount {
                        ready: *ready,
                        not_ready: *not_ready,
                    };
                    (z.to_string(), c)
                })
                .collect();
            assert_eq!(&d.update(&zones, &rates), want, "step {i}: {zones:?}");
            assert_eq!(d.master_disruption(), *master, "step {i}");
        }
    }

    fn states(list: &[(&str, ZoneState, f64)]) -> BTreeMap<String, (ZoneState, f64)> {
        list.iter()
            .map(|(z, s, r)| (z.to_string(), (*s, *r)))
            .collect()
    }

    #[test]
    fn every_node_silent_at_once_is_master_disruption() {
        // The seed: one zone of three nodes.
        walk(&[
            (&[], Step::Nothing, false),
            (
                &[("", 3, 0)],
                Step::Zones(states(&[("", Normal, 0.1)])),
                false,
            ),
            (&[("", 2, 1)], Step::Nothing, false),
            (&[("", 0, 3)], Step::EnterMasterDisruption, true),
            (&[("", 0, 3)], Step::Nothing, true),
            (
                &[("", 1, 2)],
                Step::ExitMasterDisruption(states(&[("", Normal, 0.1)])),
                false,
            ),
            (&[("", 3, 0)], Step::Nothing, false),
        ]);
    }

    #[test]
    fn a_whole_zone_down_while_another_is_up_taints_at_the_normal_rate() {
        walk(&[
            (
                &[("a", 2, 0), ("b", 2, 0)],
                Step::Zones(states(&[("a", Normal, 0.1), ("b", Normal, 0.1)])),
                false,
            ),
            (
                &[("a", 0, 2), ("b", 2, 0)],
                Step::Zones(states(&[("a", FullDisruption, 0.1)])),
                false,
            ),
            // Then b goes too: every zone is down.
            (
                &[("a", 0, 2), ("b", 0, 2)],
                Step::EnterMasterDisruption,
                true,
            ),
            // A new zone appears with a Ready node: out of master disruption.
            (
                &[("a", 0, 2), ("b", 0, 2), ("c", 1, 0)],
                Step::Zones(states(&[("c", Normal, 0.1)])),
                false,
            ),
            // Zone c goes away: all remaining zones were and are fully disrupted.
            (&[("a", 0, 2), ("b", 0, 2)], Step::Nothing, true),
            (
                &[("a", 1, 1), ("b", 0, 2)],
                Step::ExitMasterDisruption(states(&[
                    ("a", Normal, 0.1),
                    ("b", FullDisruption, 0.1),
                ])),
                false,
            ),
        ]);
    }

    #[test]
    fn partial_disruption_slows_or_stops_a_zone() {
        walk(&[
            (
                &[("big", 100, 0), ("small", 5, 0)],
                Step::Zones(states(&[("big", Normal, 0.1), ("small", Normal, 0.1)])),
                false,
            ),
            (
                &[("big", 40, 60), ("small", 2, 3)],
                Step::Zones(states(&[
                    ("big", PartialDisruption, 0.01),
                    ("small", PartialDisruption, 0.0),
                ])),
                false,
            ),
            (
                &[("big", 100, 0), ("small", 2, 3)],
                Step::Zones(states(&[("big", Normal, 0.1)])),
                false,
            ),
        ]);
    }
}
