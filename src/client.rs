//! The Kubernetes client the agents share: kube-rs over plain HTTP to the lab's API server
//! (`http://<master-ip>:8080`), reached over the emulated underlay.
//!
//! The service stack is built here rather than from a `kube::Config`: a lab's API server needs
//! no kubeconfig, TLS or auth plugins, and leaving that machinery out of the stack keeps it out
//! of the agents' binaries (a node's kubelet and flanneld must stay small, see BENCHMARKS.md).

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::Context;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::middleware::BaseUriLayer;
use tower::ServiceBuilder;

/// How long a connection to the API server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept for reuse, and for how long.
const POOL_MAX_IDLE: usize = 4;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn parse_url(url: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("API server URL {url:?} is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.authority().is_some(),
        "API server URL {url:?}: kemu's agents speak plain http://HOST:PORT"
    );
    Ok(uri)
}

/// A client for `url`. Call it inside a tokio runtime.
pub fn connect(url: &str) -> anyhow::Result<kube::Client> {
    let uri = parse_url(url)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Ok(client_over(uri, connector))
}

/// A client for `url` whose connections are opened inside the network namespace `ns`: a
/// launcher command (`kemu reach`) talks to a lab's API server over the lab's own network,
/// as an agent on the master would.
pub fn connect_in(
    url: &str,
    ns: std::sync::Arc<crate::netns::NetNs>,
) -> anyhow::Result<kube::Client> {
    let uri = parse_url(url)?;
    let connector = tower::service_fn(move |uri: http::Uri| {
        let ns = ns.clone();
        let connect: futures::future::BoxFuture<'static, std::io::Result<_>> =
            Box::pin(async move {
                let host = uri.host().unwrap_or_default().to_string();
                let port = uri.port_u16().unwrap_or(80);
                let stream = tokio::task::spawn_blocking(move || {
                    ns.run(move || {
                        let addr = (host.as_str(), port)
                            .to_socket_addrs()?
                            .next()
                            .ok_or_else(|| std::io::Error::other("no address"))?;
                        let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                        s.set_nonblocking(true)?;
                        s.set_nodelay(true)?;
                        Ok(s)
                    })
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
                Ok(hyper_util::rt::TokioIo::new(
                    tokio::net::TcpStream::from_std(stream)?,
                ))
            });
        connect
    });
    Ok(client_over(uri, connector))
}

fn client_over<C>(uri: http::Uri, connector: C) -> kube::Client
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin,
    C::Future: Send + Unpin + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A burst of requests (a hundred pods' status updates) opens many connections; keep a few
    // for reuse and close the rest once idle, or every agent holds them, and their buffers,
    // for ever. Watches hold their own connections and are not idle.
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(BaseUriLayer::new(uri))
        .service(http);
    kube::Client::new(service, "default")
}

/// A current-thread runtime for an agent: agents are many and must stay small.
pub fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
