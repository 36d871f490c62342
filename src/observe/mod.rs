//! Seeing what happens in a lab: the parts behind `kemu exec LAB pod/NS/NAME`, `kemu conntrack`,
//! `kemu events` and `kemu capture`.
//!
//! - [`point`]: what a user names (a host, a host's device, a pod) and where it lives (pure);
//! - [`pods`]: a pod found by name through the lab's API server, and its running container;
//! - [`conntrack`]: a host's conntrack table, filtered to a Service (pure but for the dump);
//! - [`timeline`]: events of every source merged into one time line (pure);
//! - [`pcapng`]: the capture file format (pure), and [`capture`] the AF_PACKET sockets.

pub mod capture;
pub mod conntrack;
pub mod pcapng;
pub mod pods;
pub mod point;
pub mod timeline;
pub mod trace;

use anyhow::Context;

use crate::lab::state::LabRecord;

/// A client of a lab's API server, reached as the lab's own hosts reach it (over the master's
/// network namespace), with the runtime to drive it.
pub struct LabApi {
    pub rt: tokio::runtime::Runtime,
    pub client: kube::Client,
    pub url: String,
}

impl LabApi {
    pub fn connect(record: &LabRecord) -> anyhow::Result<LabApi> {
        let topo = &record.topology;
        record.api_port.with_context(|| {
            format!(
                "lab {} runs no API server (it was started with --network-only): this command needs the cluster",
                topo.name
            )
        })?;
        let master = topo.master();
        let url = format!("http://{}:{}", master.ip, crate::lab::forward::API_PORT);
        let ns = std::sync::Arc::new(crate::netns::NetNs::open(&topo.host_namespace(master))?);
        let rt = crate::client::agent_runtime()?;
        let client = {
            let _entered = rt.enter();
            crate::client::connect_in(&url, ns)?
        };
        Ok(LabApi { rt, client, url })
    }
}
