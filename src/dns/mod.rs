//! Cluster DNS: kemu's own server for the zone CoreDNS's `kubernetes` plugin serves
//! ([`records`], pure), run as the built-in `coredns` image in `kube-system` behind the
//! `kube-dns` Service ([`server`]); the launcher installs it as kubeadm installs CoreDNS
//! (`crate::lab::addons`), and the kubelet points pods' `resolv.conf` at it.

pub mod records;
pub mod server;
