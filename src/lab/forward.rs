//! The supervisor's HTTPS endpoint on 127.0.0.1: the only way into a lab's API from the
//! machine. It speaks TLS with the lab's server certificate and lets a connection through only
//! when the client presented a certificate the lab's CA signed (`pki`, the kubeconfig's):
//! anyone else on the machine gets `401 Unauthorized`, a plain-HTTP client gets 400. An
//! authenticated connection is relayed to `<master-ip>:8080` by a socket created inside the
//! master's namespace, so the traffic still enters the lab over the master's own network stack.
//!
//! The 2015 insecure port (`http://<master>:8080`) stays reachable inside the lab only, as in the
//! article; nothing outside the lab's namespaces can route to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pki::LabPki;
use crate::netns::NetNs;

/// The API server's port on the master, as in the seed (`http://192.168.0.201:8080`).
pub const API_PORT: u16 = 8080;

/// How long a client may take to finish the TLS handshake or send its first request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::tls::{crypto_provider, first_cert};

/// The TLS settings of the endpoint: the lab's server certificate, client certificates
/// verified against the lab's CA but not required (so that a request without one can be
/// answered with a Kubernetes 401 instead of a failed handshake), HTTP/1.1 only (the API
/// server behind it speaks HTTP/1.1).
pub fn server_config(pki: &LabPki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    crate::tls::server_config(&pki.ca_cert, &pki.server_cert, &pki.server_key)
}

/// Accept on `listener` forever, relaying each authenticated connection to `target` inside `ns`.
pub async fn serve(
    listener: TcpListener,
    ns: Arc<NetNs>,
    target: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let ns = ns.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, acceptor, ns, target).await {
                tracing::debug!("API endpoint connection: {e:#}");
            }
        });
    }
}

async fn handle(
    mut client: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    ns: Arc<NetNs>,
    target: SocketAddr,
) -> anyhow::Result<()> {
    let _ = client.set_nodelay(true);
    if crate::tls::refused_plain_http(&mut client, HANDSHAKE_TIMEOUT).await? {
        return Ok(());
    }
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(client)).await??;
    let authenticated = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    if !authenticated {
        // Read the request head before answering, so the client sees the answer rather than a
        // reset connection.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.read(&mut buf)).await??;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        tls.write_all(unauthorized_response().as_bytes()).await?;
        tls.shutdown().await?;
        return Ok(());
    }
    let upstream = tokio::task::spawn_blocking(move || {
        ns.run(move || {
            let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await?
    .with_context(|| format!("connect to the API server at {target}"))?;
    let mut upstream = TcpStream::from_std(upstream)?;
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
    Ok(())
}

/// kube-apiserver's answer to a request without credentials.
pub fn unauthorized_response() -> String {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    })
    .to_string();
    format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
