//! `kemu kubelet`: the node agent of a minion. It registers the Node, heartbeats, and runs the
//! pods bound to it: a network sandbox per pod (`sandbox`, addresses from `ipam`), then the
//! containers through the runtime.

pub mod env;
pub mod ipam;
pub mod node;
pub mod sandbox;
pub mod status;
