//! The built-in `nginx` image: what the official `nginx:1.27` image does with its default
//! configuration, as seen from the network and from `kubectl logs`.
//!
//! - `/` and `/index.html` return the default welcome page (`nginx-index.html`, the 615-byte
//!   file of nginx 1.2x, byte for byte) with nginx's headers, including `Last-Modified` and an
//!   `ETag` made the way nginx makes it (`"<mtime hex>-<length hex>"`), and conditional GETs
//!   (`If-None-Match`, `If-Modified-Since`) answer 304.
//! - Other paths answer nginx's 404 page; methods other than GET/HEAD on the page answer 405.
//! - One header is kemu's own: `X-Kemu-Pod: <pod name>`, so a reachability matrix can tell
//!   which pod answered.
//! - Each request is logged on stdout in the image's `main` log format (nginx's `combined` plus
//!   `"$http_x_forwarded_for"`), which is what `kubectl logs` shows for the real image.
//! - SIGTERM/SIGINT (fast shutdown) and SIGQUIT (graceful) end the server with status 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};

use super::clock;
use super::http::{self, Handler, Request, Response};

/// The version the image reports in `Server:` and on error pages.
pub const VERSION: &str = "nginx/1.27.0";
/// The default `index.html` of nginx 1.2x.
pub const INDEX_HTML: &str = include_str!("nginx-index.html");
/// The file's modification time in the `nginx:1.27.0` image (Tue, 28 May 2024 13:22:30 GMT).
const INDEX_MTIME: i64 = 1_716_902_550;

/// `kemu image nginx` arguments. The container's own command and args (`nginx -g 'daemon
/// off;'`) are not passed on: the runtime gives the declared container ports instead.
#[derive(Debug, Parser)]
#[command(name = "nginx", about = "kemu's built-in nginx image")]
struct Args {
    /// A port to listen on (repeatable); 80 when none is given.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// The pod name sent in `X-Kemu-Pod` (default: $HOSTNAME, then the hostname).
    #[arg(long)]
    pod_name: Option<String>,
}

/// The nginx image's answers. Pure: `respond` depends on the request and the time only.
pub struct Nginx {
    pod_name: String,
}

impl Nginx {
    /// A server that names `pod_name` in `X-Kemu-Pod`.
    pub fn new(pod_name: impl Into<String>) -> Nginx {
        Nginx {
            pod_name: pod_name.into(),
        }
    }

    /// The response to `request` at time `now`.
    pub fn respond(&self, request: &Request, now: Timestamp) -> Response {
        let get_or_head = matches!(request.method.as_str(), "GET" | "HEAD");
        let Some(path) = normalize_path(request.path()) else {
            return self.error_page(400, now, false);
        };
        let page_exists = path == "/" || path == "/index.html";
        let keep_alive = request.keep_alive();
        // nginx's static module allows GET, HEAD and POST, and then refuses POST to a file.
        let allowed = get_or_head || (request.method == "POST" && !page_exists);
        let mut response = if !allowed {
            self.error_page(405, now, keep_alive)
        } else if !page_exists {
            self.error_page(404, now, keep_alive)
        } else if not_modified(request) {
            let mut r = Response::new(304, "");
            r.headers = vec![
                ("Server", VERSION.to_string()),
                ("Date", clock::http_date(now)),
                ("Last-Modified", last_modified()),
                ("Connection", connection(keep_alive)),
                ("ETag", etag()),
            ];
            r.close = !keep_alive;
            r
        } else {
            let mut r = Response::new(200, INDEX_HTML);
            r.headers = vec![
                ("Server", VERSION.to_string()),
                ("Date", clock::http_date(now)),
                ("Content-Type", "text/html".to_string()),
                ("Content-Length", INDEX_HTML.len().to_string()),
                ("Last-Modified", last_modified()),
                ("Connection", connection(keep_alive)),
                ("ETag", etag()),
                ("Accept-Ranges", "bytes".to_string()),
            ];
            r.close = !keep_alive;
            r
        };
        response.headers.push(("X-Kemu-Pod", self.pod_name.clone()));
        response.omit_body = request.method == "HEAD";
        response
    }

    /// One of nginx's built-in error pages.
    fn error_page(&self, status: u16, now: Timestamp, keep_alive: bool) -> Response {
        let reason = match status {
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Not Allowed",
            _ => http::reason_phrase(status),
        };
        let body = format!(
            "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
             <center><h1>{status} {reason}</h1></center>\r\n\
             <hr><center>{VERSION}</center>\r\n</body>\r\n</html>\r\n"
        );
        // nginx closes the connection after a 400.
        let keep_alive = keep_alive && status != 400;
        let mut r = Response::new(status, body.clone());
        r.reason = reason;
        r.headers = vec![
            ("Server", VERSION.to_string()),
            ("Date", clock::http_date(now)),
            ("Content-Type", "text/html".to_string()),
            ("Content-Length", body.len().to_string()),
            ("Connection", connection(keep_alive)),
        ];
        r.close = !keep_alive;
        r
    }
}

fn connection(keep_alive: bool) -> String {
    if keep_alive { "keep-alive" } else { "close" }.to_string()
}

fn last_modified() -> String {
    clock::http_date(Timestamp::from_second(INDEX_MTIME).expect("a valid timestamp"))
}

fn etag() -> String {
    format!("\"{:x}-{:x}\"", INDEX_MTIME, INDEX_HTML.len())
}

/// Whether a conditional GET matches the page.
fn not_modified(request: &Request) -> bool {
    match request.header("if-none-match") {
        Some(tags) => tags
            .split(',')
            .any(|t| t.trim() == etag() || t.trim() == "*"),
        None => request.header("if-modified-since") == Some(last_modified().as_str()),
    }
}

/// The URI path as nginx sees it: percent-decoded, slashes merged, `.` and `..` resolved.
/// `None` if `..` climbs above the root (nginx answers 400).
fn normalize_path(raw: &str) -> Option<String> {
    // An absolute-form target (`http://host/path`) names the path after the authority.
    let raw = match raw.split_once("://") {
        Some((_, rest)) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => raw,
    };
    if !raw.starts_with('/') {
        return None;
    }
    let decoded = http::percent_decode(raw, false);
    let mut parts: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !parts.is_empty();
    Some(format!(
        "/{}{}",
        parts.join("/"),
        if trailing { "/" } else { "" }
    ))
}

/// An access log line in the image's `main` format.
pub fn access_log_line(request: &Request, response: &Response, now: Timestamp) -> String {
    let header = |name| escape_log(request.header(name).unwrap_or("-"));
    let sent = if response.omit_body {
        0
    } else {
        response.body.len()
    };
    format!(
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" \"{}\"",
        request.peer.ip(),
        clock::nginx_local(now),
        escape_log(&request.request_line()),
        response.status,
        sent,
        header("referer"),
        header("user-agent"),
        header("x-forwarded-for"),
    )
}

/// nginx's escaping of logged strings: `"`, `\` and non-printable bytes as `\xHH`.
fn escape_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

impl Handler for Nginx {
    fn handle(self: Arc<Self>, request: Request) -> BoxFuture<'static, Response> {
        Box::pin(async move {
            let now = Timestamp::now();
            let response = self.respond(&request, now);
            println!("{}", access_log_line(&request, &response, now));
            response
        })
    }

    fn bad_request(&self, _peer: SocketAddr) -> Response {
        self.error_page(400, Timestamp::now(), false)
    }

    fn idle_timeout(&self) -> Duration {
        // The image's `keepalive_timeout 65;`.
        Duration::from_secs(65)
    }
}

fn notice(message: &str) {
    eprintln!(
        "{} [notice] {}#{}: {message}",
        clock::log_prefix(Timestamp::now()),
        std::process::id(),
        std::process::id()
    );
}

/// `kemu image nginx [--port N]... [--pod-name NAME]`.
pub fn main(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let args = Args::parse_from(std::iter::once("nginx".to_string()).chain(args));
    let pod_name = args
        .pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_default();
    let ports = if args.ports.is_empty() {
        vec![80]
    } else {
        args.ports
    };
    let nginx = Arc::new(Nginx::new(pod_name));
    super::small_runtime()?.block_on(async move {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut listeners = Vec::new();
        for port in &ports {
            match http::listen_tcp(*port).await {
                Ok(listener) => listeners.push(listener),
                Err(err) => {
                    eprintln!(
                        "{} [emerg] {}#{}: bind() to [::]:{port} failed ({}: {err})",
                        clock::log_prefix(Timestamp::now()),
                        std::process::id(),
                        std::process::id(),
                        err.raw_os_error().unwrap_or(0),
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        println!("/docker-entrypoint.sh: Configuration complete; ready for start up");
        notice("using the \"epoll\" event method");
        notice(VERSION);
        notice("start worker processes");
        for listener in listeners {
            tokio::spawn(http::serve(listener, nginx.clone()));
        }
        let signal = tokio::select! {
            _ = terminate.recv() => "15 (SIGTERM) received from 0, exiting",
            _ = interrupt.recv() => "2 (SIGINT) received from 0, exiting",
            _ = quit.recv() => "3 (SIGQUIT) received from 0, shutting down",
        };
        notice(&format!("signal {signal}"));
        notice("exit");
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers: vec![
                ("Host".into(), "10.244.1.5".into()),
                ("User-Agent".into(), "curl/8.5.0".into()),
            ],
            body: vec![],
            peer: "10.244.2.1:51234".parse().unwrap(),
        }
    }

    fn at() -> Timestamp {
        "2015-07-01T10:00:00Z".parse().unwrap()
    }

    fn wire(r: &Response) -> String {
        String::from_utf8(r.to_bytes()).unwrap()
    }

    #[test]
    fn index_page_is_the_615_byte_nginx_page() {
        assert_eq!(INDEX_HTML.len(), 615);
        assert!(
            INDEX_HTML.starts_with("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!")
        );
        assert!(
            INDEX_HTML.ends_with("<p><em>Thank you for using nginx.</em></p>\n</body>\n</html>\n")
        );
        assert_eq!(etag(), "\"6655da96-267\"");
    }

    #[test]
    fn get_root() {
        let r = Nginx::new("nginx-controller-abcde").respond(&get("/"), at());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(wire(&r)));
    }

    #[test]
    fn head_sends_headers_only() {
        let mut req = get("/index.html");
        req.method = "HEAD".into();
        let r = Nginx::new("p").respond(&req, at());
        let text = wire(&r);
        assert!(text.contains("Content-Length: 615\r\n"));
        assert!(text.ends_with("X-Kemu-Pod: p\r\n\r\n"));
    }

    #[test]
    fn missing_page_is_nginx_404() {
        let r = Nginx::new("p").respond(&get("/nope?x=1"), at());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(wire(&r)));
    }

    #[test]
    fn methods_and_paths() {
        let nginx = Nginx::new("p");
        let status = |method: &str, target: &str| {
            let mut req = get(target);
            req.method = method.into();
            nginx.respond(&req, at()).status
        };
        assert_eq!(status("GET", "/index.html"), 200);
        assert_eq!(status("GET", "//./index.html"), 200);
        assert_eq!(status("GET", "/%69ndex.html"), 200);
        assert_eq!(status("GET", "/foo/../"), 200);
        assert_eq!(status("GET", "/../etc/passwd"), 400);
        assert_eq!(status("GET", "/index.html/"), 404);
        assert_eq!(status("POST", "/"), 405);
        assert_eq!(status("POST", "/missing"), 404);
        assert_eq!(status("DELETE", "/missing"), 405);
        assert_eq!(status("GET", "http://example/index.html"), 200);
    }

    #[test]
    fn conditional_get_answers_304() {
        let mut req = get("/");
        req.headers.push(("If-None-Match".into(), etag()));
        assert_eq!(Nginx::new("p").respond(&req, at()).status, 304);
        let mut req = get("/");
        req.headers
            .push(("If-Modified-Since".into(), last_modified()));
        assert_eq!(Nginx::new("p").respond(&req, at()).status, 304);
    }

    #[test]
    fn http_1_0_closes_unless_asked() {
        let mut req = get("/");
        req.minor_version = 0;
        let r = Nginx::new("p").respond(&req, at());
        assert!(r.close);
        assert!(wire(&r).contains("Connection: close\r\n"));
    }

    #[test]
    fn access_log_is_in_main_format() {
        let req = get("/");
        let r = Nginx::new("p").respond(&req, at());
        assert_eq!(
            access_log_line(&req, &r, at()),
            "10.244.2.1 - - [01/Jul/2015:10:00:00 +0000] \"GET / HTTP/1.1\" 200 615 \"-\" \"curl/8.5.0\" \"-\""
        );
        let mut odd = get("/a\"b");
        odd.method = "HEAD".into();
        let r = Nginx::new("p").respond(&odd, at());
        assert!(access_log_line(&odd, &r, at()).contains("\"HEAD /a\\x22b HTTP/1.1\" 404 0 "));
    }
}
