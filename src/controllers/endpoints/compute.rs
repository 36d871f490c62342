//! What a Service's Endpoints and EndpointSlices should contain (pure): the pods its selector
//! picks, their readiness, and the service ports resolved per pod (a named `targetPort` is looked
//! up in each pod's container ports, so pods may differ).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controllers::util;

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label on the endpoints of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// At most this many endpoints per slice (kube's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// A service port resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedPort {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// One pod as an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub ip: String,
    pub pod: String,
    pub uid: String,
    pub namespace: String,
    pub node: Option<String>,
    pub hostname: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub ports: Vec<ResolvedPort>,
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The service ports resolved against `pod`'s containers; ports that cannot be resolved (a
/// named targetPort the pod does not have) are left out, as kube does.
pub fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<ResolvedPort> {
    let mut out = Vec::new();
    for sp in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => find_named_port(pod, name, &protocol),
            },
        };
        if let Some(port) = port {
            out.push(ResolvedPort {
                name: sp.name.clone().unwrap_or_default(),
                port,
                protocol,
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out
}

fn find_named_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// The pods of `svc` as endpoints (sorted by IP, then name). `include_terminating` keeps pods
/// being deleted (slices show them with `terminating: true`; Endpoints leave them out).
pub fn pod_endpoints(svc: &Service, pods: &[&Pod], include_terminating: bool) -> Vec<PodEndpoint> {
    let spec = svc.spec.as_ref();
    let selector = util::Selector::from_map(spec.and_then(|s| s.selector.as_ref()));
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for pod in pods {
        if !selector.matches(pod.metadata.labels.as_ref()) || util::is_terminated(pod) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if terminating && !include_terminating && !publish_not_ready {
            continue;
        }
        let pod_ready = util::is_ready(pod);
        let pspec = pod.spec.as_ref();
        let hostname = pspec
            .and_then(|s| s.hostname.clone())
            .filter(|_| pspec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str()));
        out.push(PodEndpoint {
            ip,
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            node: pspec.and_then(|s| s.node_name.clone()),
            hostname,
            ready: publish_not_ready || (pod_ready && !terminating),
            serving: publish_not_ready || pod_ready,
            terminating,
            ports: resolve_ports(svc, pod),
        });
    }
    out.sort_by(|a, b| (&a.ip, &a.pod).cmp(&(&b.ip, &b.pod)));
    out
}

fn target_ref(e: &PodEndpoint) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(e.namespace.clone()),
        name: Some(e.pod.clone()),
        uid: Some(e.uid.clone()),
        ..Default::default()
    }
}

/// The Endpoints subsets: ready pods in `addresses`, the others in `notReadyAddresses`, grouped
/// by identical port sets (kube's `RepackSubsets`).
pub fn subsets(svc: &Service, endpoints: &[PodEndpoint]) -> Vec<EndpointSubset> {
    let has_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for e in endpoints {
        if e.ports.is_empty() && (has_ports || !headless(svc)) {
            continue;
        }
        let address = EndpointAddress {
            ip: e.ip.clone(),
            hostname: e.hostname.clone(),
            node_name: e.node.clone(),
            target_ref: Some(target_ref(e)),
        };
        let group = groups.entry(e.ports.clone()).or_default();
        if e.ready {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: (!p.name.is_empty()).then(|| p.name.clone()),
                        port: p.port,
                        protocol: Some(p.protocol.clone()),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect()
            }),
        })
        .collect()
}

/// The content of one EndpointSlice (name and metadata aside).
#[derive(Debug, Clone, PartialEq)]
pub struct SliceContent {
    pub ports: Vec<ResolvedPort>,
    pub endpoints: Vec<discovery::Endpoint>,
}

impl SliceContent {
    /// The slice's `ports` field (`name` is `""` for unnamed ports, as the real controller
    /// writes it).
    pub fn ports_field(&self) -> Vec<discovery::EndpointPort> {
        self.ports
            .iter()
            .map(|p| discovery::EndpointPort {
                name: Some(p.name.clone()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect()
    }
}

/// The slices of a Service: one per port set, at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints
/// each; a Service without endpoints keeps one empty slice (kube's placeholder).
pub fn slices(endpoints: &[PodEndpoint]) -> Vec<SliceContent> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<discovery::Endpoint>> = BTreeMap::new();
    for e in endpoints {
        groups
            .entry(e.ports.clone())
            .or_default()
            .push(discovery::Endpoint {
                addresses: vec![e.ip.clone()],
                conditions: Some(discovery::EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                hostname: e.hostname.clone(),
                node_name: e.node.clone(),
                target_ref: Some(target_ref(e)),
                ..Default::default()
            });
    }
    let mut out = Vec::new();
    for (ports, eps) in groups {
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(SliceContent {
                ports: ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    if out.is_empty() {
        out.push(SliceContent {
            ports: Vec::new(),
            endpoints: Vec::new(),
        });
    }
    out
}

/// Labels of the Endpoints object: the Service's, plus the headless mark.
pub fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// Labels of the Service's slices.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = endpoints_labels(svc);
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// Pair wanted slices with existing ones of the same port set (so names stay stable): returns
/// for each wanted slice the index of the existing slice to update, if any, and the indexes of
/// the existing slices left over (to delete).
pub fn match_slices(
    wanted: &[SliceContent],
    existing: &[Vec<ResolvedPort>],
) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut used = vec![false; existing.len()];
    let mut pairs = Vec::new();
    for w in wanted {
        let found = existing
            .iter()
            .enumerate()
            .find(|(i, ports)| !used[*i] && **ports == w.ports)
            .map(|(i, _)| i);
        if let Some(i) = found {
            used[i] = true;
        }
        pairs.push(found);
    }
    // A wanted slice without a partner may take any leftover slice (fewer creates and deletes).
    for pair in pairs.iter_mut().filter(|p| p.is_none()) {
        if let Some(i) = used.iter().position(|u| !u) {
            used[i] = true;
            *pair = Some(i);
        }
    }
    let leftover = used
        .iter()
        .enumerate()
        .filter(|(_, u)| !**u)
        .map(|(i, _)| i)
        .collect();
    (pairs, leftover)
}

/// The resolved ports of an existing slice.
pub fn existing_ports(slice: &discovery::EndpointSlice) -> Vec<ResolvedPort> {
    slice
        .ports
        .iter()
        .flatten()
        .map(|p| ResolvedPort {
            name: p.name.clone().unwrap_or_default(),
            port: p.port.unwrap_or(0),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"selector": {"name": "nginx"}, "ports": ports, "clusterIP": "192.168.3.91"}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, deleting: bool, port_name: &str, port: i32) -> Pod {
        let mut meta = json!({"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                              "labels": {"name": "nginx"}});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-25T12:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "192.168.0.202", "containers": [{"name": "nginx",
                     "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn endpoints_and_slices_follow_readiness_and_named_ports() {
        let s = svc(json!([
            {"port": 8001, "targetPort": 80, "protocol": "TCP"},
            {"name": "metrics", "port": 9000, "targetPort": "metrics", "protocol": "TCP"}
        ]));
        let a = pod("nginx-a", "172.16.2.2", true, false, "metrics", 9100);
        let b = pod("nginx-b", "172.16.1.2", false, false, "metrics", 9200);
        let c = pod("nginx-c", "172.16.3.2", true, true, "metrics", 9100);
        let d = pod("nginx-d", "172.16.3.3", true, false, "other", 9100);
        let pods = [&a, &b, &c, &d];
        let for_endpoints = pod_endpoints(&s, &pods, false);
        let for_slices = pod_endpoints(&s, &pods, true);
        let out = format!(
            "subsets:\n{}\nslices:\n{}",
            serde_json::to_string_pretty(&subsets(&s, &for_endpoints)).unwrap(),
            serde_json::to_string_pretty(
                &slices(&for_slices)
                    .iter()
                    .map(|sl| json!({"ports": sl.ports_field(), "endpoints": sl.endpoints}))
                    .collect::<Vec<_>>()
            )
            .unwrap()
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn empty_service_keeps_a_placeholder_and_slices_keep_their_names() {
        assert_eq!(slices(&[]).len(), 1);
        let p80 = vec![ResolvedPort {
            name: String::new(),
            port: 80,
            protocol: "TCP".into(),
            app_protocol: None,
        }];
        let wanted = vec![SliceContent {
            ports: p80.clone(),
            endpoints: vec![],
        }];
        assert_eq!(
            match_slices(&wanted, &[vec![], p80.clone()]),
            (vec![Some(1)], vec![0])
        );
        assert_eq!(match_slices(&wanted, &[vec![]]), (vec![Some(0)], vec![]));
        assert_eq!(match_slices(&wanted, &[]), (vec![None], vec![]));
    }
}
