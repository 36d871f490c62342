//! A minimal HTTP/1.1 server for the image programs.
//!
//! The images must answer byte for byte like the servers they stand in for (nginx's header
//! order and case, Go's `net/http` defaults), which general-purpose servers do not let us
//! control. So this module only frames messages: it parses requests (with `httparse`), reads
//! bodies (`Content-Length` or chunked), keeps connections alive, and writes exactly the status
//! line, headers and body a handler returns.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Longest request head (request line and headers) accepted; nginx's default buffers hold 8k.
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body accepted (nginx's default `client_max_body_size` is 1m).
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request-target as sent (`/echo?msg=hi`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client, with IPv4-mapped IPv6 addresses shown as IPv4 (as Go and nginx show them).
    pub peer: SocketAddr,
}

impl Request {
    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query part of the target, without '?'.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// A form value as Go's `Request.FormValue` finds it: a url-encoded body first, then the
    /// query string.
    pub fn form_value(&self, key: &str) -> Option<String> {
        let from_body = self
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
            .then(|| String::from_utf8_lossy(&self.body).into_owned());
        from_body
            .iter()
            .map(String::as_str)
            .chain([self.query()])
            .find_map(|form| form_lookup(form, key))
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.minor_version == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }

    /// The request line as sent (`GET / HTTP/1.1`), for access logs.
    pub fn request_line(&self) -> String {
        format!(
            "{} {} HTTP/1.{}",
            self.method, self.target, self.minor_version
        )
    }
}

/// Look a key up in an `application/x-www-form-urlencoded` string.
fn form_lookup(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k, true) == key).then(|| percent_decode(v, true))
    })
}

/// Decode `%XX` escapes (and `+` as space when `plus_is_space`); invalid escapes stay as they are.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response: exactly what goes on the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    /// Headers in the order they are written.
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Send the headers only (HEAD; `Content-Length` still tells the body's length).
    pub omit_body: bool,
    /// Close the connection after this response.
    pub close: bool,
    /// Exit the process with this code once the response is written.
    pub exit_after: Option<i32>,
}

impl Response {
    /// A response with the standard reason phrase and no headers.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            reason: reason_phrase(status),
            headers: Vec::new(),
            body: body.into(),
            omit_body: false,
            close: false,
            exit_after: None,
        }
    }

    /// The bytes that go on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).as_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.omit_body {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The standard reason phrases (as Go's `net/http` writes them).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "status code",
    }
}

/// What a server does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(self: Arc<Self>, request: Request) -> BoxFuture<'static, Response>;
    /// Answer a request that could not be parsed (the connection is closed afterwards).
    fn bad_request(&self, peer: SocketAddr) -> Response;
    /// How long an idle keep-alive connection stays open.
    fn idle_timeout(&self) -> Duration;
}

/// Bind a TCP port on all addresses: dual-stack `[::]` like nginx's `listen [::]:80` and Go's
/// `:80`, or `0.0.0.0` where the namespace has no IPv6.
pub async fn listen_tcp(port: u16) -> io::Result<TcpListener> {
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(listener) => Ok(listener),
        Err(err) if no_ipv6(&err) => TcpListener::bind(("0.0.0.0", port)).await,
        Err(err) => Err(err),
    }
}

/// Bind a UDP port on all addresses (see `listen_tcp`).
pub async fn listen_udp(port: u16) -> io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(socket) => Ok(socket),
        Err(err) if no_ipv6(&err) => UdpSocket::bind(("0.0.0.0", port)).await,
        Err(err) => Err(err),
    }
}

fn no_ipv6(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// An address as Go and nginx print it: IPv4-mapped IPv6 addresses as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Accept connections forever, one task per connection.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            // A client that goes away is no error of the server's.
            let _ = connection(stream, canonical(peer), handler).await;
        });
    }
}

async fn connection<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head_len = loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                match httparse::Request::new(&mut headers).parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => break n,
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return reply_and_close(&mut stream, handler.bad_request(peer)).await,
                }
            }
            if buf.len() >= MAX_HEAD {
                return reply_and_close(&mut stream, handler.bad_request(peer)).await;
            }
            let read =
                tokio::time::timeout(handler.idle_timeout(), read_more(&mut stream, &mut buf));
            match read.await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err),
            }
        };
        let mut request = parse_head(&buf[..head_len], peer)
            .ok_or_else(|| io::Error::other("request head vanished"))?;
        buf.drain(..head_len);

        let body = if request
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            read_chunked(&mut stream, &mut buf).await
        } else {
            match request
                .header("content-length")
                .map(|v| v.trim().parse::<usize>())
            {
                None => Ok(Vec::new()),
                Some(Ok(len)) if len <= MAX_BODY => {
                    read_exact_body(&mut stream, &mut buf, len).await
                }
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad body length",
                )),
            }
        };
        match body {
            Ok(body) => request.body = body,
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                return reply_and_close(&mut stream, handler.bad_request(peer)).await;
            }
            Err(err) => return Err(err),
        }

        let response = handler.clone().handle(request).await;
        stream.write_all(&response.to_bytes()).await?;
        if let Some(code) = response.exit_after {
            let _ = stream.shutdown().await;
            std::process::exit(code);
        }
        if response.close {
            return stream.shutdown().await;
        }
    }
}

async fn reply_and_close(stream: &mut TcpStream, response: Response) -> io::Result<()> {
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

/// Read whatever is available into `buf`; 0 means the peer closed.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn parse_head(head: &[u8], peer: SocketAddr) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(head).ok()?;
    Some(Request {
        method: parsed.method?.to_string(),
        target: parsed.path?.to_string(),
        minor_version: parsed.version?,
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
        peer,
    })
}

async fn read_exact_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<Vec<u8>> {
    while buf.len() < len {
        if read_more(stream, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.drain(..len).collect())
}

/// Decode a chunked body (trailers are read and dropped).
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked body");
    let mut body = Vec::new();
    loop {
        let (header_len, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((n, size))) => break (n, size as usize),
                Ok(httparse::Status::Partial) if buf.len() < 1024 => {
                    if read_more(stream, buf).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                _ => return Err(invalid()),
            }
        };
        if size == 0 {
            buf.drain(..header_len);
            // Trailers end with an empty line.
            loop {
                if let Some(end) = find(buf, b"\r\n") {
                    let line_empty = end == 0;
                    buf.drain(..end + 2);
                    if line_empty {
                        return Ok(body);
                    }
                } else if buf.len() > MAX_HEAD || read_more(stream, buf).await? == 0 {
                    return Err(invalid());
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid());
        }
        while buf.len() < header_len + size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        body.extend_from_slice(&buf[header_len..header_len + size]);
        buf.drain(..header_len + size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            minor_version: 1,
            headers: vec![],
            body: vec![],
            peer: "10.0.0.1:1234".parse().unwrap(),
        }
    }

    #[test]
    fn form_values_are_decoded() {
        let r = request("/echo?msg=hello+world%21&code=");
        assert_eq!(r.form_value("msg").as_deref(), Some("hello world!"));
        assert_eq!(r.form_value("code").as_deref(), Some(""));
        assert_eq!(r.form_value("missing"), None);
        assert_eq!(r.path(), "/echo");
    }

    #[test]
    fn body_form_values_come_first() {
        let mut r = request("/echo?msg=query");
        r.method = "POST".into();
        r.headers = vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )];
        r.body = b"msg=body".to_vec();
        assert_eq!(r.form_value("msg").as_deref(), Some("body"));
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("%41%zz%4", false), "A%zz%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
    }

    #[test]
    fn keep_alive_defaults_by_version() {
        let mut r = request("/");
        assert!(r.keep_alive());
        r.minor_version = 0;
        assert!(!r.keep_alive());
        r.headers = vec![("Connection".into(), "Keep-Alive".into())];
        assert!(r.keep_alive());
    }

    #[test]
    fn mapped_addresses_print_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(canonical(mapped).to_string(), "10.1.2.3:80");
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6).to_string(), "[fd00::1]:80");
    }
}
