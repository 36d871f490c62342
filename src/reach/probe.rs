//! The kernel side of `kemu reach`: from inside each source's network namespace, one HTTP
//! request to every target, all at once. A target counts as reached when it answers with at
//! least one byte: a userspace proxy accepts connections even for a service whose endpoints
//! are all down, so a connect alone proves nothing.

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

/// The `User-Agent` of the probe from `source` to `target` in run `run`: unique, so the
/// access log of the pod that served it tells which pod answered.
pub fn user_agent(run: &str, source: usize, target: usize) -> String {
    format!("kemu-reach/{run}-{source}-{target}")
}

/// Probe every target from every source; `answers[s][t]` is source `s`'s answer from `t`.
pub fn probe_all(
    sources: &[Source],
    targets: &[Target],
    run: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Vec<Answer>>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(s, source)| {
                scope.spawn(move || -> anyhow::Result<Vec<Answer>> {
                    let ns = NetNs::open(&source.netns)?;
                    let answers = ns.run(|| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        Ok(rt.block_on(async {
                            let probes = targets.iter().enumerate().map(|(t, target)| {
                                request(target.addr, user_agent(run, s, t), timeout)
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

/// One `GET /` with a deadline for the whole exchange.
async fn request(addr: SocketAddr, user_agent: String, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, exchange(addr, &user_agent)).await {
        Ok(Ok(bytes)) if bytes.is_empty() => Answer::Failed("closed without answer".into()),
        Ok(Ok(bytes)) => Answer::Bytes(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(Err(e)) => Answer::Failed(describe(&e)),
        Err(_) => Answer::Failed("timeout".into()),
    }
}

async fn exchange(addr: SocketAddr, user_agent: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
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

fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        TimedOut => "timeout".into(),
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
