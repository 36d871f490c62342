//! The supervisor's port forward from the root namespace to the API server: kubectl on the
//! machine itself talks to `127.0.0.1:<port>`, and each connection is relayed to
//! `<master-ip>:8080` by a socket created inside the master's namespace, so the traffic still
//! enters the lab over the master's own network stack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::netns::NetNs;

/// The API server's port on the master, as in the seed (`http://192.168.0.201:8080`).
pub const API_PORT: u16 = 8080;

/// Accept on `listener` forever, relaying each connection to `target` inside `ns`.
pub async fn serve(listener: TcpListener, ns: Arc<NetNs>, target: SocketAddr) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let ns = ns.clone();
        tokio::spawn(async move {
            let upstream = tokio::task::spawn_blocking(move || {
                ns.run(move || {
                    let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
            })
            .await;
            let Ok(Ok(upstream)) = upstream else {
                tracing::debug!(%target, "API server unreachable");
                return;
            };
            let (Ok(mut upstream), mut client) = (TcpStream::from_std(upstream), client) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
