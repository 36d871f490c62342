//! Chain names derived from hashes, exactly as kube-proxy derives them.
//!
//! iptables: `base32(sha256(spn + proto))[:16]` behind `KUBE-SVC-`/`KUBE-SVL-`/`KUBE-EXT-`/
//! `KUBE-FW-`, and `base32(sha256(spn + proto + "ip:port"))[:16]` behind `KUBE-SEP-`
//! (iptables chain names are at most 28 characters).
//! nftables: `base32(sha256(name))[:8] + "-" + name` with a readable name such as
//! `ns1/svc1/tcp/p80` or `ns1/svc1/tcp/p80__10.180.0.1/80`.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::model::{Endpoint, ServicePortName};

/// First `chars` characters of the standard base32 encoding of `sha256(parts...)`.
/// Base32 encodes 5 bytes into 8 characters, so only the leading bytes are encoded.
fn hash_prefix(parts: &[&str], chars: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let bytes = chars / 8 * 5;
    BASE32.encode(&digest[..bytes])
}

/// kube-proxy's `portProtoHash`: shared by the SVC, SVL, EXT and FW chains of a port.
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    hash_prefix(&[service_port_name, protocol], 16)
}

/// The four per-service-port iptables chain names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesChains {
    pub cluster: String,
    pub local: String,
    pub external: String,
    pub firewall: String,
}

impl IptablesChains {
    pub fn new(service_port_name: &str, protocol: &str) -> IptablesChains {
        let hash = port_proto_hash(service_port_name, protocol);
        IptablesChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }
}

/// `KUBE-SEP-…` for one endpoint (`endpoint` is `ip:port`).
pub fn iptables_endpoint_chain(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(&[service_port_name, protocol, endpoint], 16)
    )
}

/// Longest nftables chain-name base (knftables' 256 minus room for a 16-character prefix).
const NFT_NAME_BASE_MAX: usize = 240;

/// kube-proxy's `hashAndTruncate`.
fn nft_hash_and_truncate(name: &str) -> String {
    let mut out = hash_prefix(&[name], 8);
    out.push('-');
    out.push_str(name);
    if out.len() > NFT_NAME_BASE_MAX {
        out.truncate(NFT_NAME_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `HASH-namespace/name/protocol/portName`, the base of `service-`, `local-`, `external-`
/// and `firewall-` chains.
pub fn nft_service_chain_base(name: &ServicePortName) -> String {
    nft_hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        name.namespace,
        name.name,
        name.protocol.as_str(),
        name.port
    ))
}

/// `HASH-namespace/name/protocol/portName__ip/port`, the base of `endpoint-` chains and
/// `affinity-` sets (IPv6 colons become dots).
pub fn nft_endpoint_chain_base(name: &ServicePortName, endpoint: &Endpoint) -> String {
    let ip = endpoint.ip.to_string().replace(':', ".");
    nft_hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        name.namespace,
        name.name,
        name.protocol.as_str(),
        name.port,
        ip,
        endpoint.port
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;

    // Verified values from the research note (§2.2, §3) and upstream tests.
    #[test]
    fn iptables_hashes_match_kube_proxy() {
        assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(
            port_proto_hash("default/kubernetes:https", "tcp"),
            "NPX46M4PTMTKRN6Y"
        );
        assert_eq!(
            port_proto_hash("kube-system/kube-dns:dns", "udp"),
            "TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            port_proto_hash("kube-system/kube-dns:dns-tcp", "tcp"),
            "ERIFXISQEP7F7OF4"
        );
        assert_eq!(
            iptables_endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        // 2015 spelling of the default service, as in a published v1.1 dump.
        assert_eq!(
            port_proto_hash("default/kubernetes:", "tcp"),
            "6N4SJQIF3IX3FORG"
        );
        let chains = IptablesChains::new("ns5/svc5:p80", "tcp");
        assert_eq!(chains.firewall, "KUBE-FW-NUKIZ6OKUXPJNT4C");
    }

    #[test]
    fn nftables_names_match_kube_proxy() {
        let name = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(nft_service_chain_base(&name), "ULMVA6XW-ns1/svc1/tcp/p80");
        let ep = Endpoint::new("10.180.0.1".parse().unwrap(), 80);
        assert_eq!(
            nft_endpoint_chain_base(&name, &ep),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn long_nftables_names_are_truncated() {
        let long = "x".repeat(300);
        let name = nft_hash_and_truncate(&long);
        assert_eq!(name.len(), NFT_NAME_BASE_MAX);
        assert!(name.ends_with("..."));
    }
}
