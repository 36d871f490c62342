//! The Kubernetes client the agents share: kube-rs over plain HTTP to the lab's API server
//! (`http://<master-ip>:8080`), reached over the emulated underlay.

use std::time::Duration;

use anyhow::Context;

/// A client for `url`. Call it inside a tokio runtime.
pub fn connect(url: &str) -> anyhow::Result<kube::Client> {
    let uri = url
        .parse()
        .with_context(|| format!("API server URL {url:?} is not a URL"))?;
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(Duration::from_secs(2));
    kube::Client::try_from(config).with_context(|| format!("create a client for {url}"))
}

/// A current-thread runtime for an agent: agents are many and must stay small.
pub fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
