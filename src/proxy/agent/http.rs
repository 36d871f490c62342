//! The agent's HTTP endpoints, as kube-proxy's: health (`/healthz`, `/livez`), metrics
//! (`/metrics`, `/healthz`, `/proxyMode`) and one listener per health check node port. A
//! request is read up to its blank line, answered and the connection closed: the callers
//! are load balancers, probes and scrapers, each a single GET.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::{self, Metrics, NfacctReadings};
use crate::proxy::nfnetlink::Nfnl;

/// What the endpoints report; the agent updates it after every sync.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    /// The last successful sync.
    pub last_updated: SystemTime,
    /// Since when a change waits for a sync (kube-proxy's `QueuedUpdate`).
    pub queued_since: Option<Instant>,
    /// Twice the sync period, as kube-proxy's `NewProxierHealthServer`.
    pub health_timeout: Duration,
    /// Local ready endpoints per service (`namespace/name`).
    pub local_endpoints: HashMap<String, usize>,
    /// Which nfacct counters the rules use (read at scrape time).
    pub nfacct: (bool, bool),
}

impl Shared {
    pub fn new(health_timeout: Duration) -> Shared {
        Shared {
            metrics: Metrics::default(),
            last_updated: SystemTime::now(),
            queued_since: None,
            health_timeout,
            local_endpoints: HashMap::new(),
            nfacct: (false, false),
        }
    }

    pub fn healthy(&self) -> bool {
        self.queued_since
            .is_none_or(|at| at.elapsed() <= self.health_timeout)
    }
}

pub type SharedState = Arc<Mutex<Shared>>;

/// Which endpoint a listener serves.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Health,
    Metrics,
    /// A health check node port of service `namespace/name`.
    Service {
        namespace: String,
        name: String,
    },
}

struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

fn answer(endpoint: &Endpoint, path: &str, shared: &SharedState) -> Reply {
    let json = "application/json";
    let text = "text/plain; charset=utf-8";
    let mut s = shared.lock().expect("agent state lock");
    let now = SystemTime::now();
    match endpoint {
        Endpoint::Health => {
            let healthy = s.healthy();
            let (eligible, counter) = match path {
                "/healthz" => (Some(true), &mut s.metrics.healthz),
                "/livez" => (None, &mut s.metrics.livez),
                _ => {
                    return Reply {
                        code: 404,
                        content_type: text,
                        body: "404 page not found\n".into(),
                    };
                }
            };
            if healthy {
                counter.0 += 1;
            } else {
                counter.1 += 1;
            }
            Reply {
                code: if healthy { 200 } else { 503 },
                content_type: json,
                body: metrics::health_body(healthy, s.last_updated, now, eligible),
            }
        }
        Endpoint::Metrics => match path {
            "/metrics" => {
                let (invalid, localhost) = s.nfacct;
                let metrics = s.metrics.clone();
                drop(s);
                Reply {
                    code: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: metrics.render(read_nfacct(invalid, localhost)),
                }
            }
            "/healthz" => Reply {
                code: 200,
                content_type: text,
                body: "ok".into(),
            },
            "/proxyMode" => Reply {
                code: 200,
                content_type: text,
                body: s.metrics.mode.clone(),
            },
            _ => Reply {
                code: 404,
                content_type: text,
                body: "404 page not found\n".into(),
            },
        },
        Endpoint::Service { namespace, name } => {
            let count = s
                .local_endpoints
                .get(&format!("{namespace}/{name}"))
                .copied()
                .unwrap_or(0);
            let (code, body) = metrics::service_health(namespace, name, count, s.healthy());
            Reply {
                code,
                content_type: json,
                body,
            }
        }
    }
}

/// The nfacct counters the rules use, read now (a missing counter reads as absent).
fn read_nfacct(invalid: bool, localhost: bool) -> NfacctReadings {
    let Ok(mut nfnl) = Nfnl::open() else {
        return NfacctReadings::default();
    };
    let mut read = |on: bool, name: &str| {
        on.then(|| nfnl.counter(name).ok().map(|(pkts, _)| pkts))
            .flatten()
    };
    NfacctReadings {
        ct_state_invalid_dropped: read(invalid, metrics::CT_STATE_INVALID_DROPPED),
        localhost_nodeports_accepted: read(localhost, metrics::LOCALHOST_NODEPORTS_ACCEPTED),
    }
}

async fn connection(mut stream: TcpStream, endpoint: Endpoint, shared: SharedState) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
    {
        return;
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.split(' ').nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_string();
    let reply = answer(&endpoint, &path, &shared);
    let reason = match reply.code {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let date = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nX-Content-Type-Options: nosniff\r\nDate: {date}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.code,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Accept connections on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shared: SharedState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(connection(stream, endpoint.clone(), shared.clone()));
    }
}

/// Bind `addr` and serve `endpoint` on it in the background.
pub async fn start(
    addr: SocketAddr,
    endpoint: Endpoint,
    shared: SharedState,
) -> std::io::Result<tokio::task::AbortHandle> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(serve(listener, endpoint, shared)).abort_handle())
}
