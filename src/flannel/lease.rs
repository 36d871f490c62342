//! flannel's Kubernetes subnet manager, as data: a host's lease is its Node's `spec.podCIDR`
//! plus flannel's annotations (backend type, backend data with the VTEP MAC, public IP).
//! Pure functions, so the agent's decisions are testable without an API server.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use crate::netlink::Mac;
use crate::overlay::Lease;

pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// flannel's vxlan `BackendData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// The annotations flanneld writes on its own Node.
pub fn annotations(
    backend: &str,
    public_ip: Ipv4Addr,
    vtep_mac: Option<Mac>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(BACKEND_TYPE.to_string(), backend.to_string());
    let data = match vtep_mac {
        Some(mac) => serde_json::to_string(&VxlanData {
            vni: crate::overlay::VXLAN_VNI,
            vtep_mac: mac.to_string(),
        })
        .expect("serializes"),
        None => "null".to_string(),
    };
    a.insert(BACKEND_DATA.to_string(), data);
    a.insert(PUBLIC_IP.to_string(), public_ip.to_string());
    a.insert(KUBE_SUBNET_MANAGER.to_string(), "true".to_string());
    a
}

/// The VTEP MAC a node's annotations record (kept across restarts).
pub fn recorded_vtep_mac(node: &Node) -> Option<Mac> {
    let data = node.metadata.annotations.as_ref()?.get(BACKEND_DATA)?;
    let data: VxlanData = serde_json::from_str(data).ok()?;
    data.vtep_mac.parse().ok()
}

/// A node's lease, if it carries a complete one for `backend`. Like flannel, leases of another
/// backend type are ignored.
pub fn lease_of(node: &Node, backend: &str) -> Option<Lease> {
    let name = node.metadata.name.clone()?;
    let cidr: Ipv4Net = node.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let annotations = node.metadata.annotations.as_ref()?;
    if annotations.get(BACKEND_TYPE)? != backend {
        return None;
    }
    let public_ip: Ipv4Addr = annotations.get(PUBLIC_IP)?.parse().ok()?;
    let vtep_mac = match backend {
        "vxlan" => Some(recorded_vtep_mac(node)?),
        _ => None,
    };
    Some(Lease {
        host: name,
        subnet: cidr,
        public_ip,
        vtep_mac,
    })
}

/// The peers a host should route to: every other node's lease, sorted by node name.
pub fn peers(nodes: &[Node], own: &str, backend: &str) -> Vec<Lease> {
    let mut leases: Vec<Lease> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own))
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| lease_of(n, backend))
        .collect();
    leases.sort_by(|a, b| a.host.cmp(&b.host));
    leases
}

/// What changed between the leases programmed and the leases wanted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeaseDiff {
    pub removed: Vec<Lease>,
    pub added: Vec<Lease>,
}

/// Compare programmed and wanted leases by host: a changed lease is removed then added.
pub fn diff(current: &[Lease], wanted: &[Lease]) -> LeaseDiff {
    let removed = current
        .iter()
        .filter(|c| !wanted.contains(c))
        .cloned()
        .collect();
    let added = wanted
        .iter()
        .filter(|w| !current.contains(w))
        .cloned()
        .collect();
    LeaseDiff { removed, added }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str, mac: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.annotations = Some(annotations(
            "vxlan",
            ip.parse().unwrap(),
            Some(mac.parse().unwrap()),
        ));
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some(cidr.into()),
            ..Default::default()
        });
        n
    }

    #[test]
    fn annotations_match_flannel() {
        let a = annotations(
            "vxlan",
            "192.168.0.201".parse().unwrap(),
            Some("aa:bb:cc:dd:ee:ff".parse().unwrap()),
        );
        assert_eq!(
            a[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}"#
        );
        assert_eq!(a[PUBLIC_IP], "192.168.0.201");
        assert_eq!(a[BACKEND_TYPE], "vxlan");
    }

    #[test]
    fn peers_skip_self_incomplete_and_other_backends() {
        let mut other = node("c", "172.16.3.0/24", "192.168.0.203", "02:00:00:00:00:03");
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(BACKEND_TYPE.into(), "host-gw".into());
        let mut incomplete = node("d", "172.16.4.0/24", "192.168.0.204", "02:00:00:00:00:04");
        incomplete.spec = None;
        let nodes = vec![
            node("b", "172.16.2.0/24", "192.168.0.202", "02:00:00:00:00:02"),
            node("a", "172.16.1.0/24", "192.168.0.201", "02:00:00:00:00:01"),
            other,
            incomplete,
        ];
        let peers = peers(&nodes, "a", "vxlan");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].host, "b");
        assert_eq!(peers[0].vtep_mac.unwrap().to_string(), "02:00:00:00:00:02");
    }

    #[test]
    fn a_changed_lease_is_removed_then_added() {
        let a = lease_of(
            &node("b", "172.16.2.0/24", "192.168.0.202", "02:00:00:00:00:02"),
            "vxlan",
        )
        .unwrap();
        let moved = Lease {
            public_ip: "192.168.0.222".parse().unwrap(),
            ..a.clone()
        };
        let d = diff(std::slice::from_ref(&a), std::slice::from_ref(&moved));
        assert_eq!(
            d,
            LeaseDiff {
                removed: vec![a],
                added: vec![moved]
            }
        );
    }
}
