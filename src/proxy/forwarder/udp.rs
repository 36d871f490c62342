//! UDP forwarding with per-client sessions, as the 2015 proxy did it: the first datagram
//! from a client address picks an endpoint and opens a socket connected to it; datagrams
//! both ways go through that session until it has been idle for [`IDLE_TIMEOUT`].
//! Replies leave through the service's own socket, so conntrack turns their source back
//! into the address the client sent to.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Balancer, LbKey, SharedInfo, pick};

/// The 2015 `udpIdleTimeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_DATAGRAM: usize = 65535;

/// A socket on `addr`.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

struct Session {
    upstream: Arc<UdpSocket>,
    /// Poked on every client datagram; the reply task's idle timer restarts on it.
    activity: watch::Sender<()>,
}

/// Serve until aborted; aborting drops the session tasks (and their sockets) with it.
pub async fn serve(socket: UdpSocket, info: SharedInfo, lb: Balancer) {
    let socket = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut replies: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("udp receive: {e}");
                        continue;
                    }
                };
                let session = match sessions.entry(client) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let key: LbKey = {
                            let info = info.lock().expect("info lock");
                            (info.name.clone(), info.scope_for(None))
                        };
                        let Some(upstream) = open_session(&lb, &key, client).await else {
                            continue;
                        };
                        let (tx, rx) = watch::channel(());
                        replies.spawn(relay_replies(upstream.clone(), socket.clone(), client, rx));
                        e.insert(Session { upstream, activity: tx })
                    }
                };
                session.activity.send_replace(());
                if let Err(e) = session.upstream.send(&buf[..n]).await {
                    tracing::debug!(%client, "udp send to endpoint: {e}");
                }
            }
            Some(Ok(client)) = replies.join_next(), if !replies.is_empty() => {
                sessions.remove(&client);
            }
        }
    }
}

/// A socket connected to the chosen endpoint.
async fn open_session(lb: &Balancer, key: &LbKey, client: SocketAddr) -> Option<Arc<UdpSocket>> {
    let endpoint = pick(lb, key, client.ip(), false)?;
    let local: SocketAddr = if endpoint.is_ipv4() {
        "0.0.0.0:0".parse().expect("constant")
    } else {
        "[::]:0".parse().expect("constant")
    };
    let upstream = UdpSocket::bind(local).await.ok()?;
    upstream.connect(endpoint).await.ok()?;
    tracing::debug!(service = %key.0, %client, %endpoint, "new udp session");
    Some(Arc::new(upstream))
}

/// Copy replies back to the client until the session is idle; returns the client.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    mut activity: watch::Receiver<()>,
) -> SocketAddr {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = upstream.recv(&mut buf) => match received {
                Ok(n) => {
                    if let Err(e) = socket.send_to(&buf[..n], client).await {
                        tracing::debug!(%client, "udp reply: {e}");
                    }
                }
                // ICMP port unreachable from the endpoint and the like: end the session.
                Err(_) => return client,
            },
            changed = activity.changed() => {
                if changed.is_err() {
                    return client;
                }
                continue;
            }
            _ = tokio::time::sleep(IDLE_TIMEOUT) => return client,
        }
    }
}
