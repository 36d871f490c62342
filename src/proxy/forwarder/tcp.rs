//! TCP forwarding: accept on the proxy port, dial an endpoint (next one on failure, with the
//! 2015 timeouts), then copy both directions until both sides have closed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{Balancer, LbKey, SharedInfo, pick};

/// The dial timeouts of the 2015 proxy (`endpointDialTimeout`): one try per entry, each with
/// the next endpoint.
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// A listening socket on `addr` (address reuse on, so a restarted agent gets its port back
/// while old connections linger).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accept until the task is aborted (which closes the listening socket).
pub async fn serve(listener: TcpListener, info: SharedInfo, lb: Balancer) {
    loop {
        match listener.accept().await {
            Ok((conn, client)) => {
                tokio::spawn(forward(conn, client, info.clone(), lb.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Where the connection was going before REDIRECT/DNAT sent it here (`SO_ORIGINAL_DST`).
pub fn original_destination(conn: &TcpStream) -> Option<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SO_ORIGINAL_DST (80) at SOL_IP: conntrack's original destination.
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: `addr` and `len` describe a valid buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        ))
    })
}

async fn forward(mut conn: TcpStream, client: SocketAddr, info: SharedInfo, lb: Balancer) {
    let _ = conn.set_nodelay(true);
    let original = original_destination(&conn);
    let key: LbKey = {
        let info = info.lock().expect("info lock");
        (info.name.clone(), info.scope_for(original))
    };
    let client_ip: IpAddr = client.ip();
    for (attempt, timeout) in DIAL_TIMEOUTS.iter().enumerate() {
        let Some(endpoint) = pick(&lb, &key, client_ip, attempt > 0) else {
            break;
        };
        match tokio::time::timeout(*timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                tracing::debug!(service = %key.0, %client, %endpoint, "forwarding");
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(service = %key.0, %endpoint, "dial failed: {e}")
            }
            Err(_) => {
                tracing::warn!(service = %key.0, %endpoint, ?timeout, "dial timed out")
            }
        }
    }
    // No endpoint (or none answered): reset, so the client sees the connection refused
    // rather than an empty reply.
    tracing::info!(service = %key.0, %client, "no endpoint; resetting the connection");
    let _ = conn.set_zero_linger();
}
