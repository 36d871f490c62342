//! The kernel side of `kemu reach`: from inside each source's network namespace, one HTTP
//! request (or, to a UDP port, one datagram) to every target, all targets at once and each
//! `--count` times in a row. A target counts as reached when it answers with at least one
//! byte: a userspace proxy accepts connections even for a service whose endpoints are all
//! down, so a connect alone proves nothing.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Source, Target};
use crate::netns::NetNs;

/// What came back from one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The first bytes of the answer (status line and body, at most [`MAX_ANSWER`]).
    Bytes(String),
    /// No answer; why.
    Failed(String),
}

/// How much of an answer is kept.
pub const MAX_ANSWER: usize = 16 * 1024;

/// How each target is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Deadline of one exchange.
    pub timeout: Duration,
    /// Tries per (source, target), one after the other (each a new connection, so a
    /// load-balanced Service may pick another endpoint each time).
    pub count: usize,
    /// Make each request at least this many bytes, sent with DF set (no fragmentation): an
    /// MTU black hole swallows it. TCP: a padding header; UDP: the datagram's size.
    pub size: Option<usize>,
    /// Ask the backend for the client address it saw: `GET /clientip` (agnhost netexec) and
    /// the datagram `clientip`, rather than `GET /` and `hostname`.
    pub client_ip: bool,
}

/// The `User-Agent` of try `i` of the probe from `source` to `target` in run `run`: unique,
/// so the access log of the pod that served it tells which pod answered.
pub fn user_agent(run: &str, source: usize, target: usize, i: usize) -> String {
    format!("kemu-reach/{run}-{source}-{target}-{i}")
}

/// Probe every target from every source; `answers[s][t][i]` is source `s`'s answer from `t`
/// at try `i`.
pub fn probe_all(
    sources: &[Source],
    targets: &[Target],
    run: &str,
    opts: &ProbeOptions,
) -> anyhow::Result<Vec<Vec<Vec<Answer>>>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(s, source)| {
                scope.spawn(move || -> anyhow::Result<Vec<Vec<Answer>>> {
                    let ns = NetNs::open(&source.netns)?;
                    let answers = ns.run(|| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        Ok(rt.block_on(async {
                            let probes = targets.iter().enumerate().map(|(t, target)| async move {
                                let mut answers = Vec::with_capacity(opts.count);
                                for i in 0..opts.count.max(1) {
                                    let answer = if target.udp {
                                        datagram(target.addr, opts).await
                                    } else {
                                        request(target.addr, user_agent(run, s, t, i), opts).await
                                    };
                                    answers.push(answer);
                                }
                                answers
                            });
                            futures::future::join_all(probes).await
                        }))
                    })?;
                    Ok(answers)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    })
}

/// One HTTP request with a deadline for the whole exchange.
async fn request(addr: SocketAddr, user_agent: String, opts: &ProbeOptions) -> Answer {
    match tokio::time::timeout(opts.timeout, exchange(addr, &user_agent, opts)).await {
        Ok(Ok(bytes)) if bytes.is_empty() => Answer::Failed("closed without answer".into()),
        Ok(Ok(bytes)) => Answer::Bytes(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(Err(e)) => Answer::Failed(describe(&e)),
        Err(_) => Answer::Failed("timeout".into()),
    }
}

/// The HTTP request of a probe: `GET /` (or `/clientip`), padded to `size` bytes.
pub fn http_request(addr: SocketAddr, user_agent: &str, opts: &ProbeOptions) -> String {
    let path = if opts.client_ip { "/clientip" } else { "/" };
    let head = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n"
    );
    let mut request = head;
    if let Some(size) = opts.size {
        const PAD: &str = "X-Kemu-Pad: ";
        let missing = size.saturating_sub(request.len() + PAD.len() + 4);
        if missing > 0 {
            request.push_str(PAD);
            request.push_str(&"x".repeat(missing));
            request.push_str("\r\n");
        }
    }
    request.push_str("\r\n");
    request
}

/// Never fragment what this socket sends (`IP_PMTUDISC_DO`): too big is dropped, or refused
/// at once when the route's MTU is known to be smaller.
fn set_dont_fragment(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: setsockopt with an int option that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn exchange(
    addr: SocketAddr,
    user_agent: &str,
    opts: &ProbeOptions,
) -> std::io::Result<Vec<u8>> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if opts.size.is_some() && addr.is_ipv4() {
        set_dont_fragment(std::os::fd::AsRawFd::as_raw_fd(&socket))?;
    }
    let mut stream: TcpStream = socket.connect(addr).await?;
    stream
        .write_all(http_request(addr, user_agent, opts).as_bytes())
        .await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() >= MAX_ANSWER {
                    break;
                }
            }
            // A reset after some bytes still means the target answered.
            Err(_) if !answer.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(answer)
}

/// The datagram of a UDP probe: agnhost's `hostname` (or `clientip`); with a size, an
/// `echo` of padding.
pub fn udp_payload(opts: &ProbeOptions) -> Vec<u8> {
    let base = if opts.client_ip {
        "clientip"
    } else {
        "hostname"
    };
    match opts.size {
        Some(size) if size > base.len() && !opts.client_ip => {
            let mut p = b"echo ".to_vec();
            p.resize(size.max(6), b'x');
            p
        }
        _ => base.as_bytes().to_vec(),
    }
}

/// One UDP exchange: a datagram, and the first datagram back within the deadline.
async fn datagram(addr: SocketAddr, opts: &ProbeOptions) -> Answer {
    let exchange = async {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("constant")
        } else {
            "[::]:0".parse().expect("constant")
        };
        let socket = tokio::net::UdpSocket::bind(bind).await?;
        if addr.is_ipv4() {
            set_dont_fragment(std::os::fd::AsRawFd::as_raw_fd(&socket))?;
        }
        socket.connect(addr).await?;
        socket.send(&udp_payload(opts)).await?;
        let mut buf = vec![0u8; 65536];
        let n = socket.recv(&mut buf).await?;
        buf.truncate(n.min(MAX_ANSWER));
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(opts.timeout, exchange).await {
        Ok(Ok(bytes)) => Answer::Bytes(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(Err(e)) => Answer::Failed(describe(&e)),
        Err(_) => Answer::Failed("timeout".into()),
    }
}

fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        TimedOut => "timeout".into(),
        _ if e.raw_os_error() == Some(libc::EMSGSIZE) => "message too long (DF)".into(),
        _ => e.to_string(),
    }
}

/// The body of an HTTP answer, if it has one.
pub fn body(answer: &str) -> &str {
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or(answer)
}

/// A body that is an address and port (agnhost's `/clientip` and `clientip`): the address.
pub fn client_in(answer: &str) -> Option<String> {
    let body = body(answer).trim();
    body.parse::<SocketAddr>().ok().map(|a| a.ip().to_string())
}

/// A body that is just a name (agnhost `serve-hostname`, netexec `/hostname`).
pub fn hostname_in(answer: &str) -> Option<&str> {
    let body = body(answer).trim();
    let valid = !body.is_empty()
        && body.len() <= 253
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: Option<usize>, client_ip: bool) -> ProbeOptions {
        ProbeOptions {
            timeout: Duration::from_secs(1),
            count: 1,
            size,
            client_ip,
        }
    }

    #[test]
    fn requests_and_datagrams_are_padded_to_the_size_asked() {
        let addr: SocketAddr = "192.168.3.10:80".parse().unwrap();
        let plain = http_request(addr, "ua", &opts(None, false));
        assert_eq!(
            plain,
            "GET / HTTP/1.0\r\nHost: 192.168.3.10:80\r\nUser-Agent: ua\r\nAccept: */*\r\n\r\n"
        );
        let big = http_request(addr, "ua", &opts(Some(3000), true));
        assert_eq!(big.len(), 3000);
        assert!(big.starts_with("GET /clientip ") && big.ends_with("xx\r\n\r\n"));
        // Smaller than the request itself: nothing added.
        assert_eq!(http_request(addr, "ua", &opts(Some(10), false)), plain);
        assert_eq!(udp_payload(&opts(None, false)), b"hostname");
        assert_eq!(udp_payload(&opts(None, true)), b"clientip");
        let echo = udp_payload(&opts(Some(1400), false));
        assert_eq!(echo.len(), 1400);
        assert!(echo.starts_with(b"echo xxx"));
    }

    #[test]
    fn client_addresses_are_read_from_clientip_answers() {
        assert_eq!(
            client_in("HTTP/1.1 200 OK\r\n\r\n172.16.2.0:40312"),
            Some("172.16.2.0".to_string())
        );
        assert_eq!(client_in("172.16.1.5:5353"), Some("172.16.1.5".to_string()));
        assert_eq!(client_in("HTTP/1.1 200 OK\r\n\r\nweb-abc"), None);
    }

    #[test]
    fn hostnames_are_recognised_only_in_bare_bodies() {
        assert_eq!(
            hostname_in("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnginx-abc"),
            Some("nginx-abc")
        );
        assert_eq!(
            hostname_in("HTTP/1.1 200 OK\r\n\r\n<!DOCTYPE html>\n<html>"),
            None
        );
        assert_eq!(hostname_in("HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
