//! A raw HTTP/1.1 client for requests no client library would send: paths as written (`..`
//! segments), bodies that are huge, stall half-way or are chunked, any Content-Type. It reads
//! one response (Content-Length or chunked) and stops there, so a server that answers before
//! reading the whole body is seen answering.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a read may block before the test gives up: a fail-safe against a server that never
/// answers, far above anything a working server needs.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: status, headers (names lower-cased) and the de-chunked body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the request body is sent.
pub enum Send<'a> {
    /// No body.
    None,
    /// All of it, with its Content-Length.
    Whole(&'a [u8]),
    /// A Content-Length of `declared`, but only the first `sent` bytes (zeros), then the
    /// connection stays open, as from a slow or hostile client.
    Partial { declared: usize, sent: usize },
    /// Chunked: `len` bytes (zeros) in 1 MiB chunks, without the final chunk (the body never ends).
    ChunkedUnfinished { len: usize },
    /// A Content-Length of `len` and that many zeros, written by another thread while the
    /// response is read: whether the server reads them or not does not matter.
    Flood { len: usize },
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API server");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

/// Send `method path` with `headers` (`Name: value` lines) and `body`; read the response.
pub fn request(port: u16, method: &str, path: &str, headers: &[&str], body: Send<'_>) -> Reply {
    let mut stream = connect(port);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    match &body {
        Send::None => {}
        Send::Whole(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Send::Partial { declared, .. } => head.push_str(&format!("Content-Length: {declared}\r\n")),
        Send::ChunkedUnfinished { .. } => head.push_str("Transfer-Encoding: chunked\r\n"),
        Send::Flood { len } => head.push_str(&format!("Content-Length: {len}\r\n")),
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (and close) before the body is all sent, which is what some tests
    // look for: a write that fails ends the sending, and the answer is read all the same.
    let mut flooder = None;
    let _ = match body {
        Send::None => Ok(()),
        Send::Whole(b) => stream.write_all(b),
        Send::Partial { sent, .. } => stream.write_all(&vec![0u8; sent]),
        Send::ChunkedUnfinished { len } => write_chunks(&mut stream, len),
        Send::Flood { len } => {
            let mut writer = stream.try_clone().unwrap();
            flooder = Some(std::thread::spawn(move || {
                let chunk = vec![0u8; 64 << 10];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if writer.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    left -= n;
                }
            }));
            Ok(())
        }
    };
    let reply = read_response(&mut stream);
    drop(stream);
    if let Some(f) = flooder {
        let _ = f.join();
    }
    reply
}

/// `len` zeros in 1 MiB chunks, without the final (empty) chunk.
fn write_chunks(stream: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20);
        stream.write_all(format!("{n:x}\r\n").as_bytes())?;
        stream.write_all(&vec![0u8; n])?;
        stream.write_all(b"\r\n")?;
        left -= n;
    }
    Ok(())
}

/// Read more into `buf`; panic if the server closes or says nothing for [`READ_TIMEOUT`].
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, what: &str) {
    let mut tmp = [0u8; 64 << 10];
    match stream.read(&mut tmp) {
        Ok(0) => panic!("the server closed the connection while sending {what}"),
        Ok(n) => buf.extend_from_slice(&tmp[..n]),
        Err(e) => {
            panic!("nothing from the server for {READ_TIMEOUT:?} while waiting for {what}: {e}")
        }
    }
}

fn read_response(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let (status, headers, header_len) = loop {
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut parsed);
        if let httparse::Status::Complete(n) = resp.parse(&buf).expect("an HTTP response") {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (resp.code.unwrap(), headers, n);
        }
        fill(stream, &mut buf, "the response head");
    };
    let mut rest = buf.split_off(header_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            fill(stream, &mut rest, "the response body");
        }
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(stream, &mut rest, "the next chunk (the stream did not end)");
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            while rest.len() < line_end + 2 + size + 2 {
                fill(stream, &mut rest, "a chunk");
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        panic!("a response with neither Content-Length nor chunked encoding: {headers:?}");
    };
    Reply {
        status,
        headers,
        body,
    }
}
