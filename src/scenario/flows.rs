//! Traffic of a scenario's `traffic` step, sent from inside a host's or a pod's network
//! namespace: HTTP requests, TCP connections or UDP datagrams, one after another, each with
//! its own timeout, each counted with the answer it got.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Proto;
use super::expect::FlowResult;
use crate::netns::NetNs;

/// What to send.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    pub target: SocketAddr,
    pub proto: Proto,
    pub count: u32,
    pub size: Option<usize>,
    pub interval: Duration,
    pub timeout: Duration,
    pub source_port: Option<u16>,
    pub path: String,
}

/// Send the flows from `netns`; one result per flow.
pub fn run(netns: &str, spec: &FlowSpec) -> anyhow::Result<Vec<FlowResult>> {
    let ns = NetNs::open(netns)?;
    let spec = spec.clone();
    let results = ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(async move {
            let mut results = Vec::new();
            for i in 0..spec.count {
                if i > 0 && !spec.interval.is_zero() {
                    tokio::time::sleep(spec.interval).await;
                }
                let flow = one(&spec);
                let result = match tokio::time::timeout(spec.timeout, flow).await {
                    Ok(Ok(answer)) => FlowResult::Ok(answer),
                    Ok(Err(e)) => FlowResult::Failed(e.to_string()),
                    Err(_) => FlowResult::Failed("timed out".into()),
                };
                results.push(result);
            }
            results
        }))
    })?;
    Ok(results)
}

async fn one(spec: &FlowSpec) -> std::io::Result<String> {
    let local = SocketAddr::new(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        spec.source_port.unwrap_or(0),
    );
    match spec.proto {
        Proto::Udp => {
            let socket = tokio::net::UdpSocket::bind(local).await?;
            socket.connect(spec.target).await?;
            // agnhost netexec answers `hostname` with the pod's name; padding (spaces it trims)
            // makes the datagram as large as asked.
            let mut payload = b"hostname".to_vec();
            if let Some(size) = spec.size {
                payload.resize(size.max(payload.len()), b' ');
            }
            socket.send(&payload).await?;
            let mut buf = vec![0u8; 65536];
            let n = socket.recv(&mut buf).await?;
            Ok(first_line(&buf[..n]))
        }
        Proto::Tcp | Proto::Http => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            if spec.source_port.is_some() {
                socket.set_reuseaddr(true)?;
                socket.bind(local)?;
            }
            let mut stream = socket.connect(spec.target).await?;
            if spec.proto == Proto::Tcp {
                if let Some(size) = spec.size {
                    stream.write_all(&vec![b'x'; size]).await?;
                }
                return Ok("connected".into());
            }
            let body = vec![b'x'; spec.size.unwrap_or(0)];
            let method = if body.is_empty() { "GET" } else { "POST" };
            let head = format!(
                "{method} {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: kemu-run\r\nContent-Length: {}\r\n\r\n",
                spec.path,
                spec.target,
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            let text = String::from_utf8_lossy(&answer);
            let (status, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
            if !status.starts_with("HTTP/") {
                return Err(std::io::Error::other(format!(
                    "not an HTTP answer: {status:?}"
                )));
            }
            let body = rest.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            Ok(format!(
                "{} {}",
                status.split(' ').nth(1).unwrap_or(""),
                first_line(body.as_bytes())
            )
            .trim()
            .to_string())
        }
    }
}

/// The first line of an answer, at most 100 characters.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim()
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(100)
        .collect()
}
