//! `kemu events`: one time line of a lab, from every source that keeps time:
//!
//! - `event`: the cluster's core/v1 Events (pod lifecycle, scheduling, evictions);
//! - `node`: the last transition of each Node condition (Ready, NetworkUnavailable ...);
//! - `endpoints`: each EndpointSlice's endpoints at its last change, then (following) every
//!   change seen;
//! - `proxy`: each node's rule syncs (from the proxy agent's status file);
//! - `fault`: faults applied and removed, agents killed and restarted (the lab's fault
//!   history, [`crate::faults::history`]);
//! - `agent`: the latest start of every agent the supervisor restarted (a crash, a kill).
//!
//! All pure: the command reads the objects and files and hands them here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use crate::faults::history::{Action, FaultEvent};
use crate::proxy::agent::control::SyncRecord;

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Fault,
    Agent,
    Node,
    Event,
    Endpoints,
    Proxy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fault => "fault",
            Source::Agent => "agent",
            Source::Node => "node",
            Source::Event => "event",
            Source::Endpoints => "endpoints",
            Source::Proxy => "proxy",
        }
    }
}

/// One line of the time line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Event {
    pub time: Timestamp,
    pub source: Source,
    /// What it is about: `pod/default/web-x`, `node/192.168.0.202`, `slice/default/web-abc`,
    /// `host/192.168.0.202`, `lab`.
    pub object: String,
    pub message: String,
}

/// The cluster's Events, at their last occurrence.
pub fn from_kube_events(events: &[KubeEvent]) -> Vec<Event> {
    events
        .iter()
        .filter_map(|e| {
            let time = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.event_time.as_ref().map(|t| t.0))
                .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            let o = &e.involved_object;
            let kind = o.kind.as_deref().unwrap_or("object").to_lowercase();
            let object = match &o.namespace {
                Some(ns) if !ns.is_empty() => {
                    format!("{kind}/{ns}/{}", o.name.as_deref().unwrap_or_default())
                }
                _ => format!("{kind}/{}", o.name.as_deref().unwrap_or_default()),
            };
            let mut message = format!(
                "{} {}",
                e.reason.as_deref().unwrap_or("-"),
                e.message.as_deref().unwrap_or_default().trim()
            );
            if let Some(src) = &e.source {
                let component = src.component.as_deref().unwrap_or_default();
                match src.host.as_deref() {
                    Some(h) if !h.is_empty() => {
                        let _ = write!(message, " ({component} on {h})");
                    }
                    _ if !component.is_empty() => {
                        let _ = write!(message, " ({component})");
                    }
                    _ => {}
                }
            }
            if let Some(n) = e.count.filter(|n| *n > 1) {
                let _ = write!(message, " x{n}");
            }
            Some(Event {
                time,
                source: Source::Event,
                object,
                message,
            })
        })
        .collect()
}

/// The last transition of every condition of every Node.
pub fn from_nodes(nodes: &[Node]) -> Vec<Event> {
    let mut out = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        for c in node
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
        {
            let Some(time) = c.last_transition_time.as_ref().map(|t| t.0) else {
                continue;
            };
            let mut message = format!("{}={}", c.type_, c.status);
            if let Some(r) = c.reason.as_deref().filter(|r| !r.is_empty()) {
                let _ = write!(message, " {r}");
            }
            if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
                let _ = write!(message, ": {m}");
            }
            out.push(Event {
                time,
                source: Source::Node,
                object: format!("node/{name}"),
                message,
            });
        }
    }
    out
}

/// The endpoints of one slice, as compared between polls: address → (ready, serving,
/// terminating, node).
pub type SliceState = BTreeMap<String, (bool, bool, bool, String)>;

/// `slice/<ns>/<name>` and the state of a slice.
pub fn slice_state(slice: &EndpointSlice) -> (String, SliceState) {
    let key = format!(
        "slice/{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice.metadata.name.as_deref().unwrap_or_default()
    );
    let mut state = SliceState::new();
    for e in &slice.endpoints {
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let value = (
            ready,
            c.serving.unwrap_or(ready),
            c.terminating.unwrap_or(false),
            e.node_name.clone().unwrap_or_default(),
        );
        for a in &e.addresses {
            state.insert(a.clone(), value.clone());
        }
    }
    (key, state)
}

fn describe_endpoint(addr: &str, v: &(bool, bool, bool, String)) -> String {
    let mut s = addr.to_string();
    if !v.0 {
        s.push_str(if v.2 {
            " (terminating)"
        } else {
            " (not ready)"
        });
    }
    s
}

fn describe_slice(state: &SliceState) -> String {
    if state.is_empty() {
        return "no endpoints".into();
    }
    let all: Vec<String> = state.iter().map(|(a, v)| describe_endpoint(a, v)).collect();
    format!("endpoints {}", all.join(", "))
}

/// Each slice at its last change (its newest managedFields time, else its creation).
pub fn from_slices(slices: &[EndpointSlice]) -> Vec<Event> {
    slices
        .iter()
        .filter_map(|s| {
            let newest = s
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|m| m.time.as_ref().map(|t| t.0))
                .max();
            let time = newest.or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            let (object, state) = slice_state(s);
            Some(Event {
                time,
                source: Source::Endpoints,
                object,
                message: describe_slice(&state),
            })
        })
        .collect()
}

/// What changed in the slices between two polls, stamped `at`.
pub fn slice_changes(
    before: &BTreeMap<String, SliceState>,
    after: &BTreeMap<String, SliceState>,
    at: Timestamp,
) -> Vec<Event> {
    let mut out = Vec::new();
    for key in before.keys().chain(after.keys()) {
        if out.iter().any(|e: &Event| &e.object == key) {
            continue;
        }
        let (old, new) = (before.get(key), after.get(key));
        let message = match (old, new) {
            (Some(_), None) => "deleted".to_string(),
            (None, Some(new)) => describe_slice(new),
            (Some(old), Some(new)) if old != new => {
                let mut parts = Vec::new();
                for (a, v) in new {
                    match old.get(a) {
                        None => parts.push(format!("+{}", describe_endpoint(a, v))),
                        Some(o) if o != v => parts.push(format!("~{}", describe_endpoint(a, v))),
                        _ => {}
                    }
                }
                for a in old.keys().filter(|a| !new.contains_key(*a)) {
                    parts.push(format!("-{a}"));
                }
                if parts.is_empty() {
                    continue;
                }
                parts.join(" ")
            }
            _ => continue,
        };
        out.push(Event {
            time: at,
            source: Source::Endpoints,
            object: key.clone(),
            message,
        });
    }
    out
}

/// The rule syncs of host `host`'s proxy.
pub fn from_syncs(host: &str, syncs: &[SyncRecord]) -> Vec<Event> {
    syncs
        .iter()
        .map(|s| {
            let mut message = format!(
                "{} {} sync: {} service ports, {} endpoints, {:.1} ms",
                s.mode,
                if s.full { "full" } else { "partial" },
                s.service_ports,
                s.endpoints,
                s.ms
            );
            if s.conntrack_deleted > 0 {
                let _ = write!(
                    message,
                    ", {} stale conntrack entries deleted",
                    s.conntrack_deleted
                );
            }
            if let Some(e) = &s.error {
                message = format!("{} sync FAILED: {e}", s.mode);
            }
            Event {
                time: s.at,
                source: Source::Proxy,
                object: format!("host/{host}"),
                message,
            }
        })
        .collect()
}

/// The lab's fault history.
pub fn from_faults(history: &[FaultEvent]) -> Vec<Event> {
    history
        .iter()
        .map(|f| Event {
            time: f.at,
            source: Source::Fault,
            object: "lab".into(),
            message: match f.action {
                Action::Applied => format!("applied: {}", f.fault),
                Action::Removed => format!("removed: {}", f.fault),
                Action::Done => f.fault.clone(),
            },
        })
        .collect()
}

/// The current start of every agent that was restarted (by the supervisor, after a crash or
/// a kill): when, how often, and how the previous run ended.
pub fn from_agents(agents: &[crate::lab::supervisor::AgentStatus]) -> Vec<Event> {
    agents
        .iter()
        .filter(|a| a.restarts > 0)
        .filter_map(|a| {
            let time = Timestamp::from_second(a.started? as i64).ok()?;
            let mut message = format!("restarted (restart {})", a.restarts);
            if let Some(exit) = &a.last_exit {
                let _ = write!(message, ", previous run: {exit}");
            }
            Some(Event {
                time,
                source: Source::Agent,
                object: format!("agent/{}/{}", a.host, a.name),
                message,
            })
        })
        .collect()
}

/// All events in time order (ties: by source, object, message), duplicates dropped.
pub fn merge(parts: Vec<Vec<Event>>) -> Vec<Event> {
    let mut all: Vec<Event> = parts.into_iter().flatten().collect();
    all.sort();
    all.dedup();
    all
}

/// One event as a table line: UTC time to the millisecond, source, object, message.
pub fn line(e: &Event) -> String {
    let time = e.time.strftime("%H:%M:%S%.3f");
    format!(
        "{time}  {:<9}  {:<40}  {}",
        e.source.as_str(),
        e.object,
        e.message
    )
    .trim_end()
    .to_string()
}

/// The time line as a table.
pub fn render(events: &[Event]) -> String {
    let mut out = format!(
        "{:<12}  {:<9}  {:<40}  MESSAGE\n",
        "TIME (UTC)", "SOURCE", "OBJECT"
    );
    for e in events {
        out.push_str(&line(e));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn sources_merge_into_one_time_line() {
        let events: Vec<KubeEvent> = serde_json::from_value(json!([
            {"metadata": {"name": "e1", "namespace": "default"},
             "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-a"},
             "reason": "Started", "message": "Started container nginx",
             "source": {"component": "kubelet", "host": "192.168.0.202"},
             "lastTimestamp": "2026-12-05T10:00:02Z", "count": 1},
            {"metadata": {"name": "e2", "namespace": "default"},
             "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-a"},
             "reason": "Scheduled", "message": "Successfully assigned default/web-a to 192.168.0.202",
             "source": {"component": "default-scheduler"},
             "lastTimestamp": "2026-12-05T10:00:01Z", "count": 2}
        ]))
        .unwrap();
        let nodes: Vec<Node> = serde_json::from_value(json!([
            {"metadata": {"name": "192.168.0.203"},
             "status": {"conditions": [{"type": "Ready", "status": "Unknown",
                "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": "2026-12-05T10:00:07Z"}]}}
        ]))
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "web-x", "namespace": "default",
                "creationTimestamp": "2026-12-05T10:00:00Z",
                "managedFields": [{"manager": "endpointslice-controller", "operation": "Update",
                   "time": "2026-12-05T10:00:03Z"}]},
             "addressType": "IPv4",
             "endpoints": [{"addresses": ["172.16.2.2"], "conditions": {"ready": true}},
                           {"addresses": ["172.16.3.2"], "conditions": {"ready": false}}]}
        ]))
        .unwrap();
        let syncs = vec![SyncRecord {
            at: ts("2026-12-05T10:00:03.5Z"),
            mode: crate::proxy::ProxyMode::Iptables,
            full: false,
            ms: 4.25,
            service_ports: 3,
            endpoints: 2,
            conntrack_deleted: 1,
            error: None,
        }];
        let faults = vec![
            FaultEvent {
                at: ts("2026-12-05T10:00:05Z"),
                action: Action::Applied,
                fault: "partition (control plane): 192.168.0.203 <-> 192.168.0.201".into(),
            },
            FaultEvent {
                at: ts("2026-12-05T10:00:09Z"),
                action: Action::Removed,
                fault: "partition (control plane): 192.168.0.203 <-> 192.168.0.201".into(),
            },
        ];
        let agents: Vec<crate::lab::supervisor::AgentStatus> = serde_json::from_value(json!([
            {"host": "192.168.0.202", "name": "kubelet", "command": "kemu kubelet", "pid": 42,
             "state": "running", "restarts": 1, "lastExit": "killed by signal 9",
             "started": 1796464806},
            {"host": "192.168.0.202", "name": "proxy", "command": "kemu proxy", "pid": 43,
             "state": "running", "restarts": 0, "started": 1764928800}
        ]))
        .unwrap();
        let merged = merge(vec![
            from_kube_events(&events),
            from_nodes(&nodes),
            from_slices(&slices),
            from_syncs("192.168.0.202", &syncs),
            from_faults(&faults),
            from_faults(&faults[..1]),
            from_agents(&agents),
        ]);
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(render(&merged)));
    }

    #[test]
    fn slice_changes_name_what_came_went_and_changed() {
        let state = |v: &[(&str, bool)]| -> SliceState {
            v.iter()
                .map(|(a, r)| (a.to_string(), (*r, *r, !*r, "n".to_string())))
                .collect()
        };
        let before = BTreeMap::from([
            (
                "slice/default/web-x".to_string(),
                state(&[("172.16.2.2", true), ("172.16.3.2", true)]),
            ),
            ("slice/default/old".to_string(), state(&[])),
        ]);
        let after = BTreeMap::from([
            (
                "slice/default/web-x".to_string(),
                state(&[("172.16.3.2", false), ("172.16.4.2", true)]),
            ),
            ("slice/default/new".to_string(), state(&[])),
        ]);
        let at = ts("2026-12-05T10:00:00Z");
        let lines: Vec<String> = slice_changes(&before, &after, at)
            .iter()
            .map(|e| format!("{} {}", e.object, e.message))
            .collect();
        assert_eq!(
            lines,
            [
                "slice/default/old deleted",
                "slice/default/web-x ~172.16.3.2 (terminating) +172.16.4.2 -172.16.2.2",
                "slice/default/new no endpoints"
            ]
        );
    }
}
