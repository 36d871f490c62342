//! The flannel-style pod overlay: what each host's kernel must hold so that pod subnets on
//! different hosts reach each other. Pure functions from leases to `NetOp`s; the launcher
//! applies them when it builds a lab, and the per-host overlay agent (`kemu flanneld`) applies
//! and reverts them as leases come and go.
//!
//! vxlan backend (flannel's current scheme, `pkg/backend/vxlan`): a device `flannel.1` (VNI 1,
//! UDP 8472, `nolearning`) holding the lease's network address as a /32. For every other host
//! there is one permanent neighbour entry (remote subnet address → remote VTEP MAC), one FDB
//! entry (remote VTEP MAC → remote underlay IP) and one route (`<remote subnet> via <remote
//! subnet address> dev flannel.1 onlink`), added in that order so the kernel never has to ARP.
//!
//! host-gw backend: no device; one route per remote host, `<remote subnet> via <remote underlay
//! IP> dev eth0`. It only works when every host is on one L2 segment; across a router the
//! kernel refuses the route because the gateway is not directly reachable, exactly as it does
//! for real flannel.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::netlink::{IfName, Mac, NetOp};
use crate::topology::Backend;

/// The VXLAN device name flannel uses for VNI 1.
pub const VXLAN_DEVICE: &str = "flannel.1";
/// flannel's default VNI.
pub const VXLAN_VNI: u32 = 1;
/// The Linux default VXLAN port, which flannel uses when `Port` is 0.
pub const VXLAN_PORT: u16 = 8472;
/// Bytes of VXLAN encapsulation overhead flannel subtracts from the MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The host's underlay interface.
pub const UNDERLAY_DEVICE: &str = "eth0";
/// The host's pod bridge.
pub const POD_BRIDGE: &str = "cbr0";

/// A host's subnet lease, as flannel records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Node name of the host holding the lease.
    pub host: String,
    pub subnet: Ipv4Net,
    /// The host's underlay address (flannel's `PublicIP`).
    pub public_ip: Ipv4Addr,
    /// MAC of the host's VTEP (vxlan backend only).
    pub vtep_mac: Option<Mac>,
}

/// One overlay backend: the device a host needs and the entries it needs per remote lease.
pub trait OverlayBackend: Send + Sync {
    /// flannel's backend type name (`vxlan`, `host-gw`).
    fn name(&self) -> &'static str;
    /// MTU of the pod network given the underlay's.
    fn mtu(&self, underlay_mtu: u32) -> u32;
    /// Operations that create the backend's device for the local lease.
    fn device(&self, local: &Lease, underlay_mtu: u32) -> Vec<NetOp>;
    /// Operations that make one remote lease reachable (reverted in reverse order).
    fn peer(&self, remote: &Lease) -> Vec<NetOp>;
}

/// flannel's vxlan backend.
pub struct Vxlan;

/// flannel's host-gw backend.
pub struct HostGw;

impl OverlayBackend for Vxlan {
    fn name(&self) -> &'static str {
        "vxlan"
    }
    fn mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu - VXLAN_OVERHEAD
    }
    fn device(&self, local: &Lease, underlay_mtu: u32) -> Vec<NetOp> {
        let dev: IfName = VXLAN_DEVICE.into();
        vec![
            NetOp::Vxlan {
                name: dev.clone(),
                vni: VXLAN_VNI,
                port: VXLAN_PORT,
                local: local.public_ip,
                dev: UNDERLAY_DEVICE.into(),
                mac: local.vtep_mac.expect("vxlan lease has a VTEP MAC"),
                mtu: self.mtu(underlay_mtu),
            },
            NetOp::Address {
                dev,
                addr: Ipv4Net::new(local.subnet.network(), 32).expect("/32"),
            },
        ]
    }
    fn peer(&self, remote: &Lease) -> Vec<NetOp> {
        let gateway = remote.subnet.network();
        let mac = remote.vtep_mac.expect("vxlan lease has a VTEP MAC");
        vec![
            NetOp::Neighbour {
                dev: VXLAN_DEVICE.into(),
                ip: gateway,
                mac,
            },
            NetOp::Fdb {
                dev: VXLAN_DEVICE.into(),
                mac,
                dst: remote.public_ip,
            },
            NetOp::Route {
                dst: remote.subnet,
                via: Some(gateway),
                dev: Some(VXLAN_DEVICE.into()),
                onlink: true,
            },
        ]
    }
}

impl OverlayBackend for HostGw {
    fn name(&self) -> &'static str {
        "host-gw"
    }
    fn mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu
    }
    fn device(&self, _local: &Lease, _underlay_mtu: u32) -> Vec<NetOp> {
        Vec::new()
    }
    fn peer(&self, remote: &Lease) -> Vec<NetOp> {
        vec![NetOp::Route {
            dst: remote.subnet,
            via: Some(remote.public_ip),
            dev: Some(UNDERLAY_DEVICE.into()),
            onlink: false,
        }]
    }
}

/// The backend implementation for a topology's backend kind.
pub fn backend(kind: Backend) -> &'static dyn OverlayBackend {
    match kind {
        Backend::Vxlan => &Vxlan,
        Backend::HostGw => &HostGw,
    }
}

/// The deterministic VTEP MAC of a host (flannel picks a random one and keeps it in the lease;
/// kemu derives it so that a re-created lab is identical).
pub fn vtep_mac(lab: &str, host: &str) -> Mac {
    Mac::derive(&format!("kemu/{lab}/{host}/{VXLAN_DEVICE}"))
}

/// The pod bridge's address: the first address of the subnet, with the subnet's prefix.
pub fn pod_gateway(subnet: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(
        Ipv4Addr::from(u32::from(subnet.network()) + 1),
        subnet.prefix_len(),
    )
    .expect("prefix from a valid net")
}

/// flannel's `subnet.env`, in flannel's key order.
pub fn subnet_env(network: Ipv4Net, subnet: Ipv4Net, mtu: u32, ip_masq: bool) -> String {
    format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n",
        pod_gateway(subnet)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(host: &str, subnet: &str, ip: &str) -> Lease {
        Lease {
            host: host.into(),
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: Some(vtep_mac("seed", host)),
        }
    }

    #[test]
    fn vxlan_peer_entries_follow_flannel_order() {
        let remote = lease("192.168.0.202", "172.16.2.0/24", "192.168.0.202");
        let ops: Vec<String> = Vxlan
            .peer(&remote)
            .iter()
            .map(|op| op.to_string())
            .collect();
        let mac = remote.vtep_mac.unwrap();
        assert_eq!(
            ops,
            vec![
                format!("ip neigh replace 172.16.2.0 lladdr {mac} dev flannel.1 nud permanent"),
                format!("bridge fdb replace {mac} dev flannel.1 dst 192.168.0.202 self permanent"),
                "ip route replace 172.16.2.0/24 via 172.16.2.0 dev flannel.1 onlink".to_string(),
            ]
        );
    }

    #[test]
    fn vxlan_device_holds_the_subnet_address_as_slash_32() {
        let local = lease("192.168.0.201", "172.16.1.0/24", "192.168.0.201");
        let ops = Vxlan.device(&local, 1500);
        assert!(matches!(
            &ops[0],
            NetOp::Vxlan {
                vni: 1,
                port: 8472,
                mtu: 1450,
                ..
            }
        ));
        assert_eq!(
            ops[1].to_string(),
            "ip addr add 172.16.1.0/32 dev flannel.1"
        );
    }

    #[test]
    fn host_gw_routes_via_the_underlay_ip() {
        let remote = lease("b", "10.244.2.0/24", "10.1.0.11");
        let ops: Vec<String> = HostGw
            .peer(&remote)
            .iter()
            .map(|op| op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec!["ip route replace 10.244.2.0/24 via 10.1.0.11 dev eth0"]
        );
    }

    #[test]
    fn subnet_env_matches_flannel() {
        let env = subnet_env(
            "172.16.0.0/16".parse().unwrap(),
            "172.16.15.0/24".parse().unwrap(),
            1450,
            false,
        );
        assert_eq!(
            env,
            "FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.15.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }
}
