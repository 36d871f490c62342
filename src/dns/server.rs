//! The cluster DNS server: watches Services and EndpointSlices, keeps the zone's records
//! ([`ClusterRecords`]) current, answers on UDP and TCP port 53, forwards other names to the
//! nameservers of its own `/etc/resolv.conf` (CoreDNS's `forward . /etc/resolv.conf`), and
//! serves CoreDNS's probes: `/health` on 8080 and `/ready` on 8181.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use hickory_proto::op::Message;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::records::{Answer, ClusterRecords, Zone, no_upstream};
use crate::controllers::informer::Informer;
use crate::images::http::{self, Handler, Request, Response};

/// How long a forwarded query waits for the upstream.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest time between two rebuilds of the zone: how stale an answer may be after a
/// change (CoreDNS's own cache, with kubeadm's Corefile, keeps answers 30 s).
const REBUILD_INTERVAL: Duration = Duration::from_millis(50);
/// Largest UDP reply without EDNS (RFC 1035).
const CLASSIC_UDP_SIZE: usize = 512;

pub struct Config {
    /// API server URL, e.g. `http://192.168.0.201:8080`.
    pub api: String,
    pub domain: String,
    pub ttl: u32,
    pub port: u16,
    /// Where names outside the cluster go; none: NXDOMAIN at once.
    pub upstreams: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf that are worth forwarding to: loopback ones would be this
/// server itself (a pod with `dnsPolicy: Default` on a node without upstream DNS gets
/// `nameserver 127.0.0.1`), and CoreDNS's `loop` plugin would stop on them.
pub fn upstreams_of(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

struct Server {
    records: RwLock<Arc<ClusterRecords>>,
    upstreams: Vec<SocketAddr>,
}

impl Server {
    fn current(&self) -> Arc<ClusterRecords> {
        self.records.read().expect("records lock").clone()
    }

    /// The reply to one query message (`None`: not a DNS query, dropped).
    async fn reply(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let answer = self.current().answer(&request);
        let reply = match answer {
            Answer::Reply(reply) => reply,
            Answer::Forward => match self.forward(query).await {
                Some(raw) => return Some(raw),
                None => no_upstream(&request),
            },
        };
        reply.to_vec().ok()
    }

    /// Ask the upstreams in turn; their answer goes back unchanged.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse().expect("constant")
            } else {
                "[::]:0".parse().expect("constant")
            };
            let Ok(socket) = UdpSocket::bind(bind).await else {
                continue;
            };
            if socket.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65535];
            if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

/// A UDP reply that does not fit is sent truncated (TC set), so that the client retries
/// over TCP.
fn fit_udp(request: &[u8], reply: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(request)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload() as usize))
        .unwrap_or(CLASSIC_UDP_SIZE)
        .max(CLASSIC_UDP_SIZE);
    if reply.len() <= limit {
        return reply;
    }
    match Message::from_vec(&reply)
        .ok()
        .and_then(|m| m.truncate().to_vec().ok())
    {
        Some(truncated) => truncated,
        None => reply,
    }
}

async fn serve_udp(server: Arc<Server>, socket: Arc<UdpSocket>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        let query = buf[..n].to_vec();
        let server = server.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(reply) = server.reply(&query).await {
                let _ = socket.send_to(&fit_udp(&query, reply), peer).await;
            }
        });
    }
}

async fn serve_tcp_connection(server: Arc<Server>, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match stream.read_u16().await {
            Ok(len) => len as usize,
            Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; len];
        stream.read_exact(&mut query).await?;
        let Some(reply) = server.reply(&query).await else {
            return Ok(());
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        stream.write_u16(len).await?;
        stream.write_all(&reply).await?;
    }
}

/// CoreDNS's probe endpoints: `/health` (8080) answers "OK" while the process runs, `/ready`
/// (8181) once the first lists arrived.
struct Probes;

impl Handler for Probes {
    fn handle(self: Arc<Self>, request: Request) -> BoxFuture<'static, Response> {
        let status = if request.path() == "/health" || request.path() == "/ready" {
            200
        } else {
            404
        };
        Box::pin(async move {
            Response::new(
                status,
                if status == 200 {
                    "OK"
                } else {
                    "404 page not found\n"
                },
            )
        })
    }
    fn bad_request(&self, _peer: SocketAddr) -> Response {
        Response::new(400, "400 Bad Request")
    }
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

fn now_serial() -> u32 {
    jiff::Timestamp::now().as_second().clamp(0, u32::MAX as i64) as u32
}

/// Serve until the process is stopped.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let client = crate::client::connect(&cfg.api)?;
    let services: Informer<Service> = Informer::new();
    let slices: Informer<EndpointSlice> = Informer::new();
    // A change of either kind rebuilds the zone (coalesced: one rebuild for a burst).
    let changed = Arc::new(tokio::sync::Notify::new());
    {
        let c = changed.clone();
        services.on_change(move |_| c.notify_one());
        let c = changed.clone();
        slices.on_change(move |_| c.notify_one());
    }
    services.start(Api::all(client.clone()));
    slices.start(Api::all(client));
    let build = {
        let (services, slices, domain, ttl) = (
            services.clone(),
            slices.clone(),
            cfg.domain.clone(),
            cfg.ttl,
        );
        move || -> anyhow::Result<ClusterRecords> {
            let (svc, sl) = (services.list(), slices.list());
            let zone = Zone::new(&domain, ttl, now_serial()).map_err(anyhow::Error::msg)?;
            Ok(ClusterRecords::build(
                zone,
                svc.iter().map(|s| &**s),
                sl.iter().map(|s| &**s),
            ))
        }
    };
    // Probes answer from the start, as CoreDNS's health plugin does; the zone once listed.
    tokio::spawn(http::serve(http::listen_tcp(8080).await?, Arc::new(Probes)));
    services.wait_ready().await;
    slices.wait_ready().await;
    let server = Arc::new(Server {
        records: RwLock::new(Arc::new(build.clone()()?)),
        upstreams: cfg.upstreams.clone(),
    });
    tokio::spawn(http::serve(http::listen_tcp(8181).await?, Arc::new(Probes)));
    {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                // A burst of changes (a thousand Services being created) rebuilds the zone a
                // few times, not once per change; and never on the thread that answers.
                tokio::time::sleep(REBUILD_INTERVAL).await;
                match tokio::task::spawn_blocking(build.clone()).await {
                    Ok(Ok(records)) => {
                        *server.records.write().expect("records lock") = Arc::new(records)
                    }
                    Ok(Err(e)) => tracing::warn!("rebuilding the zone: {e:#}"),
                    Err(e) => tracing::warn!("rebuilding the zone: {e}"),
                }
            }
        });
    }
    let udp = Arc::new(http::listen_udp(cfg.port).await?);
    let tcp = http::listen_tcp(cfg.port).await?;
    println!(
        "[INFO] kemu cluster DNS: zone {} on :{} (udp, tcp){}",
        cfg.domain,
        cfg.port,
        if cfg.upstreams.is_empty() {
            ", no upstream: other names get NXDOMAIN".to_string()
        } else {
            format!(", forwarding other names to {:?}", cfg.upstreams)
        }
    );
    let mut udp_task = tokio::spawn(serve_udp(server.clone(), udp));
    loop {
        tokio::select! {
            accepted = tcp.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(serve_tcp_connection(server.clone(), stream));
            }
            stopped = &mut udp_task => anyhow::bail!("the UDP server stopped: {stopped:?}"),
        }
    }
}
