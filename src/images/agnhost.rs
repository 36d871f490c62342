//! The built-in `agnhost` image: the subcommands of Kubernetes' e2e test image that kemu's
//! tests use, with the real one's flags, endpoints, answers and log lines
//! (`test/images/agnhost/` in kubernetes/kubernetes).
//!
//! - `serve-hostname [--port 9376] [--http=true] [--tcp] [--udp] [--close]`: answers the
//!   hostname over HTTP (default), raw TCP or UDP. As in the real image, `--tcp`/`--udp` need
//!   `--http=false`, and SIGTERM leaves the server up for 60 s "awaiting pod deletion".
//! - `netexec [--http-port 8080] [--udp-port 8081]`: HTTP endpoints `/`, `/clientip`, `/dial`,
//!   `/echo`, `/exit`, `/healthz`, `/hostname` (and the older `/hostName`), `/redirect`,
//!   `/shell`, `/shutdown`; a UDP server answering `hostname`, `echo <msg>`, `clientip`
//!   (`--udp-port -1` disables it, and then `/healthz` answers 412 as the real one does).
//!   Not built in: TLS, SCTP, `/upload`.
//! - `pause`: prints "Paused" and waits; SIGINT exits 1, SIGTERM exits 2.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{ArgAction, Parser, Subcommand};
use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};

use super::clock::{self, go_log};
use super::http::{self, Handler, Request, Response};

#[derive(Debug, Parser)]
#[command(
    name = "agnhost",
    about = "kemu's built-in agnhost: serve-hostname, netexec and pause"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Agnhost>,
}

#[derive(Debug, Subcommand)]
enum Agnhost {
    /// Serves the hostname through HTTP / TCP / UDP on the given port.
    ServeHostname(ServeHostnameArgs),
    /// Creates HTTP and UDP servers with various endpoints.
    Netexec(NetexecArgs),
    /// Pauses the execution.
    Pause,
}

// Go's boolean flags are written `--flag`, `--flag=true` or `--flag=false`, hence
// `require_equals` and `default_missing_value` on the booleans below.
#[derive(Debug, clap::Args)]
struct ServeHostnameArgs {
    /// Serve raw over TCP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set)]
    tcp: bool,
    /// Serve raw over UDP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set)]
    udp: bool,
    /// Serve HTTP.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true",
          default_missing_value = "true", action = ArgAction::Set)]
    http: bool,
    /// Close connection per each HTTP request.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", action = ArgAction::Set)]
    close: bool,
    /// Port number.
    #[arg(long, default_value_t = 9376)]
    port: u16,
}

#[derive(Debug, clap::Args)]
struct NetexecArgs {
    /// HTTP Listen Port.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// UDP Listen Port (-1 disables the UDP server).
    #[arg(long, default_value_t = 8081, allow_negative_numbers = true)]
    udp_port: i32,
    /// SCTP Listen Port (not built into kemu; only -1 is accepted).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    sctp_port: i32,
    /// Override the HTTP handler to always respond as if it were a GET with this path & params.
    #[arg(long, default_value = "")]
    http_override: String,
    /// A comma separated list of ip addresses the udp servers listen from.
    #[arg(long, default_value = "")]
    udp_listen_addresses: String,
    /// HTTPS is not built into kemu; only an empty value is accepted.
    #[arg(long, default_value = "")]
    tls_cert_file: String,
    /// HTTPS is not built into kemu; only an empty value is accepted.
    #[arg(long, default_value = "")]
    tls_private_key_file: String,
}

/// `kemu builtin-image agnhost <subcommand> [flags]`.
pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let cli = Cli::parse_from(std::iter::once("agnhost".to_string()).chain(args));
    match cli.command {
        None => {
            // The real image prints its usage and exits 0 when given no subcommand.
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Agnhost::ServeHostname(args)) => serve_hostname(args),
        Some(Agnhost::Netexec(args)) => netexec(args),
        Some(Agnhost::Pause) => pause(),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// `log.Fatalf`: print and exit 1.
fn fatal(message: &str) -> ! {
    go_log(message);
    std::process::exit(1)
}

/// A response as Go's `net/http` writes it: `Date`, `Content-Length`, and a sniffed
/// `Content-Type` when there is a body.
fn go_response(status: u16, body: impl Into<Bytes>) -> Response {
    let body = body.into();
    let mut response = Response::new(status, body.clone());
    response.headers = vec![
        ("Date", clock::http_date(Timestamp::now())),
        ("Content-Length", body.len().to_string()),
    ];
    if !body.is_empty() {
        response
            .headers
            .push(("Content-Type", sniff_content_type(&body).to_string()));
    }
    response
}

/// The part of Go's `http.DetectContentType` that matters for these handlers.
fn sniff_content_type(body: &[u8]) -> &'static str {
    let start = body
        .iter()
        .position(|b| !b" \t\n\r\x0c".contains(b))
        .unwrap_or(body.len());
    let lower: Vec<u8> = body[start..body.len().min(start + 14)].to_ascii_lowercase();
    let html = [
        &b"<!doctype html"[..],
        b"<html",
        b"<head",
        b"<script",
        b"<body",
        b"<a",
        b"<p",
        b"<br",
        b"<div",
        b"<title",
    ];
    if html.iter().any(|tag| {
        lower.starts_with(tag)
            && lower
                .get(tag.len())
                .is_some_and(|b| *b == b' ' || *b == b'>')
    }) {
        "text/html; charset=utf-8"
    } else if body
        .iter()
        .any(|b| matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f))
    {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// Go's 400 answer to a request it cannot parse.
fn go_bad_request() -> Response {
    let mut r = Response::new(400, "400 Bad Request");
    r.headers = vec![
        ("Content-Type", "text/plain; charset=utf-8".to_string()),
        ("Connection", "close".to_string()),
    ];
    r.close = true;
    r
}

/// Apply the request's wish to close, as Go does.
fn finish(mut response: Response, request: &Request) -> Response {
    if !request.keep_alive() {
        response.close = true;
        if request.minor_version == 1 {
            response.headers.push(("Connection", "close".to_string()));
        }
    }
    if request.method == "HEAD" {
        response.omit_body = true;
    }
    response
}

// ---------------------------------------------------------------------------------------------
// serve-hostname

struct ServeHostname {
    hostname: String,
    close: bool,
}

impl Handler for ServeHostname {
    fn handle(self: Arc<Self>, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            go_log(&format!("HTTP request from {}", request.peer));
            let mut response = go_response(200, self.hostname.clone());
            if self.close {
                // The real handler adds this header; Go then closes the connection.
                response.headers.push(("Connection", "close".to_string()));
                response.close = true;
            }
            finish(response, &request)
        })
    }

    fn bad_request(&self, _peer: SocketAddr) -> Response {
        go_bad_request()
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }
}

fn serve_hostname(args: ServeHostnameArgs) -> anyhow::Result<ExitCode> {
    if args.http && (args.tcp || args.udp) {
        fatal("Can't server TCP/UDP mode and HTTP mode at the same time");
    }
    let hostname = hostname();
    let port = args.port;
    super::small_runtime()?.block_on(async move {
        let mut terminate = signal(SignalKind::terminate())?;
        if args.tcp {
            let listener = http::listen_tcp(port)
                .await
                .unwrap_or_else(|e| fatal(&format!("Error from net.Listen(): {e}")));
            let hostname = hostname.clone();
            tokio::spawn(async move {
                loop {
                    let (mut stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => fatal(&format!("Error from Accept(): {e}")),
                    };
                    go_log(&format!("TCP request from {}", http::canonical(peer)));
                    let _ = stream.write_all(hostname.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
        if args.udp {
            let socket = http::listen_udp(port)
                .await
                .unwrap_or_else(|e| fatal(&format!("Error from ListenUDP(): {e}")));
            let hostname = hostname.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                loop {
                    let peer = match socket.recv_from(&mut buf).await {
                        Ok((_, peer)) => peer,
                        Err(e) => fatal(&format!("Error from ReadFrom(): {e}")),
                    };
                    go_log(&format!("UDP request from {}", http::canonical(peer)));
                    let _ = socket.send_to(hostname.as_bytes(), peer).await;
                }
            });
        }
        if args.http {
            let listener = http::listen_tcp(port)
                .await
                .unwrap_or_else(|e| fatal(&e.to_string()));
            let handler = Arc::new(ServeHostname {
                hostname: hostname.clone(),
                close: args.close,
            });
            tokio::spawn(http::serve(listener, handler));
        }
        go_log(&format!("Serving on port {port}."));
        terminate.recv().await;
        go_log("Shutting down after receiving signal: terminated.");
        go_log("Awaiting pod deletion.");
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(ExitCode::SUCCESS)
    })
}

// ---------------------------------------------------------------------------------------------
// netexec

struct Netexec {
    started: Instant,
    http_override: String,
    udp_ready: Arc<AtomicBool>,
}

impl Handler for Netexec {
    fn handle(self: Arc<Self>, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            let mut effective = request.clone();
            if !self.http_override.is_empty() {
                effective.method = "GET".into();
                effective.target = self.http_override.clone();
            }
            let response = self.route(&effective).await;
            finish(response, &request)
        })
    }

    fn bad_request(&self, _peer: SocketAddr) -> Response {
        go_bad_request()
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }
}

impl Netexec {
    async fn route(&self, r: &Request) -> Response {
        let value = |key: &str| r.form_value(key).unwrap_or_default();
        match r.path() {
            "/clientip" => {
                go_log("GET /clientip");
                go_response(200, r.peer.to_string())
            }
            "/dial" => dial(r).await,
            "/echo" => {
                let (msg, code) = (value("msg"), value("code"));
                go_log(&format!("GET /echo?msg={msg}&code={code}"));
                if code.is_empty() {
                    return go_response(200, msg);
                }
                match code.parse::<u16>() {
                    Ok(code) if (100..=999).contains(&code) => go_response(code, msg),
                    _ => go_response(
                        200,
                        format!("argument 'code' must be an integer or empty, got {code:?}\n"),
                    ),
                }
            }
            "/exit" => exit(r).await,
            "/healthz" => {
                go_log("GET /healthz");
                let ready = self.udp_ready.load(Ordering::Relaxed);
                go_response(if ready { 200 } else { 412 }, "")
            }
            "/hostname" | "/hostName" => {
                go_log(&format!("GET {}", r.path()));
                go_response(200, hostname())
            }
            "/redirect" => {
                let (location, code) = (value("location"), value("code"));
                go_log(&format!(
                    "{} /redirect?msg={location}&code={code}",
                    r.method
                ));
                let code = if code.is_empty() {
                    302
                } else {
                    match code.parse::<u16>() {
                        Ok(code) => code,
                        Err(_) => {
                            return go_response(
                                200,
                                format!(
                                    "argument 'code' must be an integer or empty, got {code:?}\n"
                                ),
                            );
                        }
                    }
                };
                let body = if matches!(r.method.as_str(), "GET" | "HEAD") {
                    format!(
                        "<a href=\"{}\">{}</a>.\n\n",
                        html_escape(&location),
                        http::reason_phrase(code)
                    )
                } else {
                    String::new()
                };
                let mut response = go_response(code, body);
                response.headers.insert(0, ("Location", location));
                response
            }
            "/shell" => shell(r).await,
            "/shutdown" => {
                go_log("GET /shutdown");
                std::process::exit(0)
            }
            _ => {
                go_log("GET /");
                go_response(200, format!("NOW: {}", go_time_string(self.started)))
            }
        }
    }
}

/// Go's `Time.String()` of now, in UTC: `2024-07-01 10:00:00.123456789 +0000 UTC m=+1.5`.
fn go_time_string(started: Instant) -> String {
    let now = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let elapsed = started.elapsed();
    format!(
        "{} +0000 UTC m=+{}.{:09}",
        now.strftime("%Y-%m-%d %H:%M:%S%.f"),
        elapsed.as_secs(),
        elapsed.subsec_nanos()
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// A string as Go's `encoding/json` writes it (HTML-safe: `<`, `>`, `&` escaped).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `/shell?cmd=...`: run the command with `/bin/sh -c`, answer its combined output.
async fn shell(r: &Request) -> Response {
    let cmd = r
        .form_value("shellCommand")
        .filter(|c| !c.is_empty())
        .or_else(|| r.form_value("cmd"))
        .unwrap_or_default();
    go_log(&format!("GET /shell?cmd={cmd}"));
    let result = tokio::task::spawn_blocking(move || combined_output(&cmd))
        .await
        .unwrap_or_else(|e| (Vec::new(), Some(e.to_string())));
    let (output, error) = result;
    let mut fields = Vec::new();
    if let Some(error) = &error {
        fields.push(format!("\"error\":{}", go_json_string(error)));
    }
    if !output.is_empty() {
        let output = String::from_utf8_lossy(&output);
        fields.push(format!("\"output\":{}", go_json_string(&output)));
    }
    go_response(200, format!("{{{}}}", fields.join(",")))
}

/// Run `/bin/sh -c cmd` with stdout and stderr into one pipe, like Go's `CombinedOutput`:
/// the output and Go's error text (`exit status 1`, `signal: killed`).
fn combined_output(cmd: &str) -> (Vec<u8>, Option<String>) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let spawn = || -> std::io::Result<(Vec<u8>, std::process::ExitStatus)> {
        let (mut reader, writer) = std::io::pipe()?;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .spawn()?;
        let mut output = Vec::new();
        reader.read_to_end(&mut output)?;
        Ok((output, child.wait()?))
    };
    match spawn() {
        Ok((output, status)) => {
            let error = match (status.code(), status.signal()) {
                (Some(0), _) => None,
                (Some(code), _) => Some(format!("exit status {code}")),
                (None, Some(sig)) => Some(format!("signal: {}", go_signal_name(sig))),
                (None, None) => Some("unknown exit".to_string()),
            };
            (output, error)
        }
        Err(e) => (Vec::new(), Some(format!("fork/exec /bin/sh: {e}"))),
    }
}

fn go_signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGHUP => "hangup".into(),
        n => format!("signal {n}"),
    }
}

/// `/exit?code=&timeout=&wait=`.
async fn exit(r: &Request) -> Response {
    let value = |key: &str| r.form_value(key).unwrap_or_default();
    let (code, timeout, wait) = (value("code"), value("timeout"), value("wait"));
    go_log(&format!(
        "GET /exit?code={code}&timeout={timeout}&wait={wait}"
    ));
    let Some(timeout_d) = parse_go_duration(&timeout) else {
        return go_response(
            200,
            format!(
                "argument 'timeout' must be a valid golang duration or empty, got {timeout:?}\n"
            ),
        );
    };
    let Some(wait_d) = parse_go_duration(&wait) else {
        return go_response(
            200,
            format!("argument 'wait' must be a valid golang duration or empty, got {wait:?}\n"),
        );
    };
    let exit_code = if code.is_empty() {
        0
    } else {
        match code.parse::<i32>() {
            Ok(c) => c,
            Err(_) => {
                return go_response(
                    200,
                    format!("argument 'code' must be an integer [0-127] or empty, got {code:?}\n"),
                );
            }
        }
    };
    go_log(&format!(
        "Will begin shutdown in {}, allowing {} for connections to close, then will exit with {exit_code}",
        go_duration_string(wait_d),
        go_duration_string(timeout_d)
    ));
    tokio::time::sleep(wait_d).await;
    if timeout_d.is_zero() {
        std::process::exit(exit_code);
    }
    let mut response = go_response(200, "");
    response.exit_after = Some(exit_code);
    response
}

/// Parse a Go duration (`""` and `"0"` are zero; `1m30s`, `500ms`, `1.5h`).
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() || s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// A duration as Go prints it, enough for whole and fractional seconds (`0s`, `10s`, `1.5s`).
fn go_duration_string(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        let minutes = (secs / 60.0).floor();
        format!("{}m{}s", minutes, secs - minutes * 60.0)
    } else if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{secs}s")
    }
}

/// `/dial?host=&port=&request=&protocol=&tries=`: ask another server, report what it said.
async fn dial(r: &Request) -> Response {
    let value = |key: &str| {
        r.query()
            .split('&')
            .find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == key).then(|| http::percent_decode(v, true))
            })
            .unwrap_or_default()
    };
    let (host, port, request, protocol, tries) = (
        value("host"),
        value("port"),
        value("request"),
        value("protocol"),
        value("tries"),
    );
    go_log(&format!(
        "GET /dial?host={host}&protocol={protocol}&port={port}&request={request}&tries={tries}"
    ));
    let tries = if tries.is_empty() {
        1
    } else {
        match tries.parse::<u32>() {
            Ok(t) => t,
            Err(e) => return go_error(400, &format!("tries parameter is invalid. {e}")),
        }
    };
    if request.is_empty() {
        return go_error(400, "request parameter not specified. <nil>");
    }
    let host_port = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addr = match tokio::net::lookup_host(&host_port)
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        _ => {
            return go_error(
                400,
                &format!("host and/or port param are invalid. address {host_port}: invalid"),
            );
        }
    };
    let udp = match protocol.to_ascii_lowercase().as_str() {
        "" | "http" => false,
        "udp" => true,
        _ => return go_error(400, &format!("unsupported protocol. {protocol}")),
    };
    let mut responses = Vec::new();
    let mut errors = Vec::new();
    let mut last = String::new();
    for _ in 0..tries {
        let result = if udp {
            dial_udp(&request, addr).await
        } else {
            dial_http(&request, addr).await
        };
        match result {
            Ok(body) => {
                last = body.clone();
                responses.push(body);
            }
            Err(e) => {
                last.clear();
                errors.push(e);
            }
        }
    }
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| go_json_string(s))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut fields = Vec::new();
    if !errors.is_empty() {
        fields.push(format!("\"errors\":[{}]", list(&errors)));
    }
    // As the real one: responses are reported only when the last try answered.
    if !last.is_empty() {
        fields.push(format!("\"responses\":[{}]", list(&responses)));
    }
    go_response(200, format!("{{{}}}", fields.join(",")))
}

/// Go's `http.Error`.
fn go_error(status: u16, message: &str) -> Response {
    let mut response = go_response(status, format!("{message}\n"));
    response.headers.retain(|(name, _)| *name != "Content-Type");
    response
        .headers
        .push(("Content-Type", "text/plain; charset=utf-8".into()));
    response
        .headers
        .push(("X-Content-Type-Options", "nosniff".into()));
    response
}

async fn dial_http(request: &str, addr: SocketAddr) -> Result<String, String> {
    let url = format!("http://{addr}/{request}");
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: connect: {}", os_error_text(&e)))?;
        let head = format!(
            "GET /{request} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        response_body(&raw).ok_or_else(|| "malformed HTTP response".to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// The body of a complete HTTP response read until the server closed.
fn response_body(raw: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(raw).ok()? else {
        return None;
    };
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let mut body = &raw[head_len..];
    let mut decoded = Vec::new();
    if chunked {
        loop {
            let httparse::Status::Complete((n, size)) = httparse::parse_chunk_size(body).ok()?
            else {
                return None;
            };
            let size = size as usize;
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(body.get(n..n + size)?);
            body = body.get(n + size + 2..)?;
        }
    } else {
        decoded.extend_from_slice(&body[..length.unwrap_or(body.len()).min(body.len())]);
    }
    Some(String::from_utf8_lossy(&decoded).into_owned())
}

async fn dial_udp(request: &str, addr: SocketAddr) -> Result<String, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("udp dial failed. err:{e}"))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("udp dial failed. err:{e}"))?;
    socket
        .send(request.as_bytes())
        .await
        .map_err(|e| format!("udp connection write failed. err:{e}"))?;
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Ok(_)) => Err("reading from udp connection failed. err:'<nil>'".into()),
        Ok(Err(e)) => Err(format!(
            "reading from udp connection failed. err:'read udp {}->{addr}: {}'",
            socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            os_error_text(&e)
        )),
        Err(_) => Err(format!(
            "reading from udp connection failed. err:'read udp {}->{addr}: i/o timeout'",
            socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        )),
    }
}

/// An OS error as Go prints it (`connection refused`), without Rust's "(os error N)".
fn os_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The netexec UDP server: `hostname`, `echo <msg>`, `clientip`.
async fn udp_server(socket: UdpSocket, ready: Arc<AtomicBool>) {
    ready.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                ready.store(false, Ordering::Relaxed);
                fatal(&format!(
                    "Error occurred: failed accepting UDP connections:{e}"
                ))
            }
        };
        let client = http::canonical(peer);
        let text = String::from_utf8_lossy(&buf[..n]).trim().to_lowercase();
        let reply = if text == "hostname" {
            go_log("Sending udp hostName response");
            Some(hostname())
        } else if let Some(msg) = text.strip_prefix("echo ") {
            go_log(&format!("Echoing {msg} to UDP client {client}"));
            Some(msg.to_string())
        } else if text == "clientip" {
            go_log(&format!("Sending clientip back to UDP client {client}"));
            Some(client.to_string())
        } else {
            if !text.is_empty() {
                go_log(&format!(
                    "Unknown UDP command received from {client}: {text}"
                ));
            }
            None
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(reply.as_bytes(), peer).await;
        }
    }
}

fn netexec(args: NetexecArgs) -> anyhow::Result<ExitCode> {
    if args.sctp_port != -1 {
        anyhow::bail!("netexec --sctp-port: SCTP is not built into kemu's agnhost");
    }
    if !args.tls_cert_file.is_empty() || !args.tls_private_key_file.is_empty() {
        anyhow::bail!("netexec --tls-cert-file: HTTPS is not built into kemu's agnhost");
    }
    let udp_addresses: Vec<String> = if args.udp_listen_addresses.is_empty() {
        vec![String::new()]
    } else {
        let mut list: Vec<String> = args
            .udp_listen_addresses
            .split(',')
            .map(str::to_string)
            .collect();
        if let Some(bad) = list.iter().find(|a| a.parse::<std::net::IpAddr>().is_err()) {
            fatal(&format!("parseAddress: invalid address {bad}"));
        }
        list.sort();
        list.dedup();
        list
    };
    super::small_runtime()?.block_on(async move {
        let udp_ready = Arc::new(AtomicBool::new(false));
        if args.udp_port != -1 {
            let port = u16::try_from(args.udp_port)?;
            for address in &udp_addresses {
                let socket = if address.is_empty() {
                    http::listen_udp(port).await
                } else {
                    UdpSocket::bind((address.parse::<std::net::IpAddr>()?, port)).await
                };
                let socket = socket.unwrap_or_else(|e| {
                    fatal(&format!(
                        "Error occurred: failed to create listener for UDP address {address}:{port}:{e}"
                    ))
                });
                go_log(&format!("Started UDP server on port {address} {port}"));
                tokio::spawn(udp_server(socket, udp_ready.clone()));
            }
        }
        let listener = http::listen_tcp(args.http_port)
            .await
            .unwrap_or_else(|e| fatal(&format!("listen tcp :{}: bind: {}", args.http_port, os_error_text(&e))));
        go_log(&format!("Started HTTP server on port {}", args.http_port));
        let handler = Arc::new(Netexec {
            started: Instant::now(),
            http_override: args.http_override,
            udp_ready,
        });
        http::serve(listener, handler).await?;
        Ok(ExitCode::SUCCESS)
    })
}

// ---------------------------------------------------------------------------------------------
// pause

fn pause() -> anyhow::Result<ExitCode> {
    println!("Paused");
    super::small_runtime()?.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let code = tokio::select! {
            _ = interrupt.recv() => 1,
            _ = terminate.recv() => 2,
        };
        Ok(ExitCode::from(code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_json_escapes_like_go() {
        assert_eq!(
            go_json_string("a<b>&\"c\"\n\u{1}"),
            r#""a\u003cb\u003e\u0026\"c\"\n\u0001""#
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration(""), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(go_duration_string(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration_string(Duration::ZERO), "0s");
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff_content_type(b"pod-1"), "text/plain; charset=utf-8");
        assert_eq!(
            sniff_content_type(b"<a href=\"/x\">Found</a>.\n\n"),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            sniff_content_type(b"{\"output\":\"x\"}"),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn go_response_headers() {
        let r = go_response(200, "pod-1");
        let names: Vec<_> = r.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["Date", "Content-Length", "Content-Type"]);
        let empty = go_response(200, "");
        assert!(!empty.headers.iter().any(|(n, _)| *n == "Content-Type"));
    }

    #[test]
    fn shell_output_and_errors() {
        let (out, err) = combined_output("echo out; echo err >&2; exit 3");
        assert_eq!(String::from_utf8_lossy(&out), "out\nerr\n");
        assert_eq!(err.as_deref(), Some("exit status 3"));
        let (_, err) = combined_output("kill -9 $$");
        assert_eq!(err.as_deref(), Some("signal: killed"));
    }

    #[test]
    fn response_bodies_are_decoded() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(response_body(plain).as_deref(), Some("hello"));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(response_body(chunked).as_deref(), Some("hello"));
    }

    #[test]
    fn go_bool_flags() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(["agnhost", "serve-hostname"].iter().chain(args.iter()))
                .unwrap();
            match cli.command {
                Some(Agnhost::ServeHostname(a)) => (a.http, a.tcp, a.port),
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&[]), (true, false, 9376));
        assert_eq!(
            parse(&["--http=false", "--tcp", "--port", "80"]),
            (false, true, 80)
        );
        assert_eq!(parse(&["--tcp=true", "--port=81"]), (true, true, 81));
    }

    #[test]
    fn netexec_flags() {
        let cli = Cli::try_parse_from(["agnhost", "netexec", "--http-port=8080", "--udp-port=-1"])
            .unwrap();
        match cli.command {
            Some(Agnhost::Netexec(a)) => assert_eq!((a.http_port, a.udp_port), (8080, -1)),
            _ => unreachable!(),
        }
        let cli = Cli::try_parse_from(["agnhost", "netexec", "--udp-port", "-1"]).unwrap();
        assert!(matches!(cli.command, Some(Agnhost::Netexec(a)) if a.udp_port == -1));
    }
}
