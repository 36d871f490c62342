//! The built-in `nginx` image: what the official `nginx` image does with its default
//! configuration, as seen from the network and from `kubectl logs`.
//!
//! - `/` and `/index.html` return the default welcome page byte for byte: for `nginx` and
//!   `nginx:latest` the page of the 2015 article's nginx (1.9.1, the 612-byte page its `curl`
//!   prints), for a version tag the page of that version (the 615-byte page from 1.23 on),
//!   with nginx's headers, including `Last-Modified` and an
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

/// A release of the image: the version it reports and its default page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Server:` header and error pages, e.g. `nginx/1.9.1`.
    pub version: String,
    /// The default `index.html`.
    pub index: &'static str,
    /// The page's modification time in the image (seconds since the epoch).
    pub mtime: i64,
}

/// The default page of nginx up to 1.22 (the page the seed article's `curl` prints).
pub const CLASSIC_INDEX: &str = include_str!("nginx-index-1.9.html");
/// The default page from nginx 1.23 on.
pub const MODERN_INDEX: &str = include_str!("nginx-index.html");

impl Release {
    /// nginx 1.9.1, the mainline release of May 2015 the seed article ran (page mtime
    /// Tue, 26 May 2015 15:02:09 GMT, ETag "55648af1-264").
    pub fn classic() -> Release {
        Release {
            version: "nginx/1.9.1".into(),
            index: CLASSIC_INDEX,
            mtime: 1_432_652_529,
        }
    }

    /// nginx 1.27.0 (page mtime Tue, 28 May 2024 13:22:30 GMT).
    pub fn modern() -> Release {
        Release {
            version: "nginx/1.27.0".into(),
            index: MODERN_INDEX,
            mtime: 1_716_902_550,
        }
    }

    /// The release an image reference names: `nginx` and `nginx:latest` are the seed's 1.9.1;
    /// a version tag (`nginx:1.27`, `nginx:1.25.3-alpine`) reports that version with the page
    /// nginx shipped then.
    pub fn for_image(image: &str) -> Release {
        let tag = image
            .split('@')
            .next()
            .unwrap_or(image)
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'));
        let numbers: Vec<u32> = tag
            .unwrap_or("")
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .split('.')
            .map_while(|p| p.parse().ok())
            .collect();
        match numbers.as_slice() {
            [major, minor, rest @ ..] => {
                let patch = rest.first().copied().unwrap_or(0);
                let modern = (*major, *minor) >= (1, 23);
                let base = if modern {
                    Release::modern()
                } else {
                    Release::classic()
                };
                Release {
                    version: format!("nginx/{major}.{minor}.{patch}"),
                    ..base
                }
            }
            _ => Release::classic(),
        }
    }
}

/// `kemu builtin-image nginx` arguments. The container's own command and args (`nginx -g 'daemon
/// off;'`) are not passed on: the runtime gives the declared container ports instead.
#[derive(Debug, Parser)]
#[command(name = "nginx", about = "kemu's built-in nginx image")]
struct Args {
    /// A port to listen on (repeatable); 80 when none is given.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// The image reference the pod named (its tag picks the release).
    #[arg(long, default_value = "nginx")]
    image: String,
    /// The pod name sent in `X-Kemu-Pod` (default: $HOSTNAME, then the hostname).
    #[arg(long)]
    pod_name: Option<String>,
}

/// The nginx image's answers. Pure: `respond` depends on the request and the time only.
pub struct Nginx {
    pod_name: String,
    release: Release,
}

impl Nginx {
    /// A server of `release` that names `pod_name` in `X-Kemu-Pod`.
    pub fn new(pod_name: impl Into<String>, release: Release) -> Nginx {
        Nginx {
            pod_name: pod_name.into(),
            release,
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
        let mut response = if !get_or_head && (request.method != "POST" || page_exists) {
            // nginx's static module allows GET, HEAD and POST; POST to a file is refused too.
            self.error_page(405, now, keep_alive)
        } else if !page_exists {
            self.error_page(404, now, keep_alive)
        } else if self.not_modified(request) {
            let mut r = Response::new(304, "");
            r.headers = vec![
                ("Server", self.release.version.clone()),
                ("Date", clock::http_date(now)),
                ("Last-Modified", self.last_modified()),
                ("Connection", connection(keep_alive)),
                ("ETag", self.etag()),
            ];
            r.close = !keep_alive;
            r
        } else {
            let mut r = Response::new(200, self.release.index);
            r.headers = vec![
                ("Server", self.release.version.clone()),
                ("Date", clock::http_date(now)),
                ("Content-Type", "text/html".to_string()),
                ("Content-Length", self.release.index.len().to_string()),
                ("Last-Modified", self.last_modified()),
                ("Connection", connection(keep_alive)),
                ("ETag", self.etag()),
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
             <hr><center>{}</center>\r\n</body>\r\n</html>\r\n",
            self.release.version
        );
        // nginx closes the connection after a 400.
        let keep_alive = keep_alive && status != 400;
        let mut r = Response::new(status, body.clone());
        r.reason = reason;
        r.headers = vec![
            ("Server", self.release.version.clone()),
            ("Date", clock::http_date(now)),
            ("Content-Type", "text/html".to_string()),
            ("Content-Length", body.len().to_string()),
            ("Connection", connection(keep_alive)),
        ];
        r.close = !keep_alive;
        r
    }

    fn last_modified(&self) -> String {
        clock::http_date(Timestamp::from_second(self.release.mtime).expect("a valid timestamp"))
    }

    fn etag(&self) -> String {
        format!(
            "\"{:x}-{:x}\"",
            self.release.mtime,
            self.release.index.len()
        )
    }

    /// Whether a conditional GET matches the page.
    fn not_modified(&self, request: &Request) -> bool {
        match request.header("if-none-match") {
            Some(tags) => tags
                .split(',')
                .any(|t| t.trim() == self.etag() || t.trim() == "*"),
            None => request.header("if-modified-since") == Some(self.last_modified().as_str()),
        }
    }
}

fn connection(keep_alive: bool) -> String {
    if keep_alive { "keep-alive" } else { "close" }.to_string()
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

/// `kemu builtin-image nginx [--port N]... [--pod-name NAME]`.
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
    let release = Release::for_image(&args.image);
    let version = release.version.clone();
    let nginx = Arc::new(Nginx::new(pod_name, release));
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
        notice(&version);
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

    fn modern(pod: &str) -> Nginx {
        Nginx::new(pod, Release::modern())
    }

    #[test]
    fn index_pages_are_nginx_pages_byte_for_byte() {
        assert_eq!(MODERN_INDEX.len(), 615);
        assert_eq!(CLASSIC_INDEX.len(), 612);
        for page in [MODERN_INDEX, CLASSIC_INDEX] {
            assert!(page.starts_with("<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!"));
            assert!(
                page.ends_with("<p><em>Thank you for using nginx.</em></p>\n</body>\n</html>\n")
            );
        }
        assert_eq!(modern("p").etag(), "\"6655da96-267\"");
        assert_eq!(
            Nginx::new("p", Release::classic()).etag(),
            "\"55648af1-264\""
        );
    }

    #[test]
    fn the_tag_picks_the_release() {
        assert_eq!(Release::for_image("nginx"), Release::classic());
        assert_eq!(
            Release::for_image("docker.io/library/nginx:latest"),
            Release::classic()
        );
        assert_eq!(Release::for_image("nginx:1.27"), Release::modern());
        let old = Release::for_image("nginx:1.21.6-alpine");
        assert_eq!(
            (old.version.as_str(), old.index),
            ("nginx/1.21.6", CLASSIC_INDEX)
        );
        assert_eq!(Release::for_image("nginx:1.25.3").version, "nginx/1.25.3");
    }

    #[test]
    fn get_root() {
        let r = modern("nginx-controller-abcde").respond(&get("/"), at());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(wire(&r)));
    }

    #[test]
    fn get_root_of_the_seed_nginx() {
        let r = Nginx::new("nginx-controller-6zr34", Release::classic()).respond(&get("/"), at());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(wire(&r)));
    }

    #[test]
    fn head_sends_headers_only() {
        let mut req = get("/index.html");
        req.method = "HEAD".into();
        let r = modern("p").respond(&req, at());
        let text = wire(&r);
        assert!(text.contains("Content-Length: 615\r\n"));
        assert!(text.ends_with("X-Kemu-Pod: p\r\n\r\n"));
    }

    #[test]
    fn missing_page_is_nginx_404() {
        let r = modern("p").respond(&get("/nope?x=1"), at());
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(wire(&r)));
    }

    #[test]
    fn methods_and_paths() {
        let nginx = modern("p");
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
        req.headers
            .push(("If-None-Match".into(), modern("p").etag()));
        assert_eq!(modern("p").respond(&req, at()).status, 304);
        let mut req = get("/");
        req.headers
            .push(("If-Modified-Since".into(), modern("p").last_modified()));
        assert_eq!(modern("p").respond(&req, at()).status, 304);
    }

    #[test]
    fn http_1_0_closes_unless_asked() {
        let mut req = get("/");
        req.minor_version = 0;
        let r = modern("p").respond(&req, at());
        assert!(r.close);
        assert!(wire(&r).contains("Connection: close\r\n"));
    }

    #[test]
    fn access_log_is_in_main_format() {
        let req = get("/");
        let r = modern("p").respond(&req, at());
        assert_eq!(
            access_log_line(&req, &r, at()),
            "10.244.2.1 - - [01/Jul/2015:10:00:00 +0000] \"GET / HTTP/1.1\" 200 615 \"-\" \"curl/8.5.0\" \"-\""
        );
        let mut odd = get("/a\"b");
        odd.method = "HEAD".into();
        let r = modern("p").respond(&odd, at());
        assert!(access_log_line(&odd, &r, at()).contains("\"HEAD /a\\x22b HTTP/1.1\" 404 0 "));
    }
}
