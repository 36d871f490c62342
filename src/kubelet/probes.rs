//! Readiness and liveness probes, run by the kubelet from the host's namespace against the pod's
//! IP (tcpSocket, httpGet) or inside the container (exec), with the probe's timing
//! (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold, failureThreshold).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::{ContainerId, ContainerRuntime, ExecRequest};

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// With the reason `describe` shows after "Readiness probe failed: ".
    Failure(String),
}

/// Probe bookkeeping of one container.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub successes: i32,
    pub failures: i32,
    pub next: Instant,
    /// The probe's verdict so far (readiness starts false, liveness starts true).
    pub passing: bool,
}

impl ProbeState {
    pub fn new(probe: &Probe, started: Instant, initially_passing: bool) -> ProbeState {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        ProbeState {
            successes: 0,
            failures: 0,
            next: started + delay,
            passing: initially_passing,
        }
    }

    /// Fold in one result; returns whether the verdict changed.
    pub fn record(&mut self, probe: &Probe, outcome: &Outcome, now: Instant) -> bool {
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        self.next = now + period;
        let before = self.passing;
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.passing = true;
                }
            }
            Outcome::Failure(_) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    self.passing = false;
                }
            }
        }
        before != self.passing
    }
}

/// A named or numbered port of a container.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("port {name:?} not found in the container's ports")),
    }
}

/// Run one probe against a container whose pod has `pod_ip`.
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    runtime: &std::sync::Arc<dyn ContainerRuntime>,
    id: &ContainerId,
) -> Outcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(tcp) = &probe.tcp_socket {
        let port = match port(container, &tcp.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let addr = SocketAddr::new(pod_ip, port);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!(
                "dial tcp {addr}: connect: {}",
                e.to_string().to_lowercase()
            )),
            Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match port(container, &http.port) {
            Ok(p) => p,
            Err(e) => return Outcome::Failure(e),
        };
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let scheme = http
            .scheme
            .clone()
            .unwrap_or_else(|| "HTTP".into())
            .to_lowercase();
        let addr = SocketAddr::new(pod_ip, port);
        let url = format!("{scheme}://{host}:{port}{path}");
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for h in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", h.name, h.value));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut head = vec![0u8; 1024];
            let n = stream.read(&mut head).await?;
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            std::io::Result::Ok(code)
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Outcome::Failure(format!(
                "Get \"{url}\": dial tcp {addr}: connect: {}",
                e.to_string().to_lowercase()
            )),
            Err(_) => Outcome::Failure(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
        };
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let request = ExecRequest {
            command: command.clone(),
            tty: false,
            stdin: false,
        };
        let run = async {
            let mut session = runtime.exec(id, request).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let _ = session.stdout.read_to_end(&mut out).await;
            if let Some(err) = session.stderr.as_mut() {
                let _ = err.read_to_end(&mut out).await;
            }
            let code = session.exit.await.map_err(|e| e.to_string())?;
            Ok::<_, String>((code, String::from_utf8_lossy(&out).trim().to_string()))
        };
        return match tokio::time::timeout(timeout, run).await {
            Ok(Ok((0, _))) => Outcome::Success,
            Ok(Ok((_, text))) => Outcome::Failure(text),
            Ok(Err(e)) => Outcome::Failure(e),
            Err(_) => Outcome::Failure(format!("command {command:?} timed out")),
        };
    }
    Outcome::Failure("the probe has no handler (exec, httpGet or tcpSocket)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_the_verdict() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(1),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut s = ProbeState::new(&probe, t0, false);
        assert!(s.record(&probe, &Outcome::Success, t0));
        assert!(s.passing);
        assert!(!s.record(&probe, &Outcome::Failure("x".into()), t0));
        assert!(s.passing, "one failure is below the threshold");
        assert!(s.record(&probe, &Outcome::Failure("x".into()), t0));
        assert!(!s.passing);
        assert_eq!(s.next, t0 + Duration::from_secs(1));
    }
}
