//! The kubelet's HTTP server on `<node ip>:10250` (plain HTTP), the interface the API server
//! uses for `kubectl logs` and `kubectl exec` (documented in `crate::api::kubelet_client`):
//! `GET /containerLogs/{namespace}/{pod}/{container}` and the WebSocket
//! `GET /exec/{namespace}/{pod}/{container}` (channel protocol v5/v4), plus `/healthz`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::worker::Ctx;
use crate::runtime::logs::{parse_line, render, render_line};
use crate::runtime::{ContainerId, ContainerState};

/// The router of the kubelet's server.
pub fn router(ctx: Arc<Ctx>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec))
        .with_state(ctx)
}

fn query(raw: Option<String>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

fn flag(q: &HashMap<String, Vec<String>>, key: &str) -> bool {
    q.get(key)
        .and_then(|v| v.first())
        .is_some_and(|v| v == "true" || v == "1")
}

/// An error answer: status and text.
type Refusal = (StatusCode, String);

/// The container instance a request means.
fn find(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<ContainerId, Refusal> {
    let registry = ctx.registry.lock().expect("registry");
    let Some(entry) = registry.get(&(ns.to_string(), pod.to_string())) else {
        let text = format!("pod {ns}/{pod} is not running on node {}", ctx.node_name);
        return Err((StatusCode::NOT_FOUND, text));
    };
    let Some((current, prev)) = entry.containers.get(container) else {
        let names: Vec<&str> = entry.containers.keys().map(String::as_str).collect();
        let text = format!(
            "container {container} is not valid for pod {pod}; choose one of: [{}]",
            names.join(" ")
        );
        return Err((StatusCode::BAD_REQUEST, text));
    };
    let id = if previous { prev } else { current };
    id.clone().ok_or_else(|| {
        let text = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start")
        };
        (StatusCode::BAD_REQUEST, text)
    })
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query(raw);
    let previous = flag(&q, "previous");
    let id = match find(&ctx, &ns, &pod, &container, previous) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let number = |k: &str| {
        q.get(k)
            .and_then(|v| v.first())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let tail = number("tailLines").filter(|n| *n >= 0).map(|n| n as usize);
    let timestamps = flag(&q, "timestamps");
    let limit = number("limitBytes").filter(|n| *n > 0).map(|n| n as usize);
    let since = number("sinceSeconds")
        .and_then(|s| {
            Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .ok()
        })
        .or_else(|| {
            q.get("sinceTime")
                .and_then(|v| v.first())
                .and_then(|t| t.parse().ok())
        });
    let path = ctx.runtime.log_path(&id);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) => return (StatusCode::OK, String::new()).into_response(),
    };
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let first = render(&text, since, tail, timestamps, limit);
    if !flag(&q, "follow") || previous {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    // Follow: send what is there, then new lines as they are written, until the container ends.
    let offset = text.len() as u64;
    let runtime = ctx.runtime.clone();
    let stream = futures::stream::unfold(
        (Some(first), file, offset, String::new(), false),
        move |(first, mut file, mut offset, mut partial, done)| {
            let runtime = runtime.clone();
            let id = id.clone();
            async move {
                if let Some(first) = first {
                    return Some((
                        Ok::<_, std::io::Error>(first),
                        (None, file, offset, partial, done),
                    ));
                }
                if done {
                    return None;
                }
                loop {
                    let mut chunk = String::new();
                    let _ = file.seek(SeekFrom::Start(offset));
                    let n = file.read_to_string(&mut chunk).unwrap_or(0);
                    offset += n as u64;
                    partial.push_str(&chunk);
                    let mut out = String::new();
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        if let Some(l) = parse_line(&line) {
                            out.push_str(&render_line(&l, timestamps));
                        }
                    }
                    let exited = matches!(runtime.state(&id), ContainerState::Exited { .. });
                    if !out.is_empty() {
                        return Some((Ok(out), (None, file, offset, partial, exited && n == 0)));
                    }
                    if exited {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(stream))
        .expect("response")
}

async fn exec(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query(raw);
    let id = match find(&ctx, &ns, &pod, &container, false) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let command = q.get("command").cloned().unwrap_or_default();
    if command.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        )
            .into_response();
    }
    let tty = flag(&q, "tty");
    let stdin = flag(&q, "stdin");
    let cmd = match ctx.runtime.exec_command(&id, &command, tty) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run_exec(socket, cmd, tty, stdin))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Pump a process's stdio over the channel protocol; end with its status on channel 3.
async fn run_exec(socket: WebSocket, cmd: std::process::Command, tty: bool, want_stdin: bool) {
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut master: Option<tokio::fs::File> = None;
    let mut master_fd = None;
    if tty {
        let Ok(pty) = nix::pty::openpty(None, None) else {
            let _ = sink
                .send(frame(
                    3,
                    br#"{"metadata":{},"status":"Failure","message":"cannot allocate a terminal"}"#,
                ))
                .await;
            return;
        };
        let slave: OwnedFd = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        master_fd = Some(pty.master.as_raw_fd());
        master = Some(tokio::fs::File::from_std(std::fs::File::from(pty.master)));
    } else {
        cmd.stdin(if want_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let status = serde_json::json!({"metadata": {}, "status": "Failure", "message": format!("exec failed: {e}")});
            let _ = sink.send(frame(3, status.to_string().as_bytes())).await;
            return;
        }
    };
    let mut readers = Vec::new();
    let mut stdin_writer: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    if let Some(master) = master {
        let (r, w) = tokio::io::split(master);
        stdin_writer = Some(Box::new(w));
        readers.push(tokio::spawn(pump(Box::new(r), 1, out_tx.clone())));
    } else {
        if let Some(stdin) = child.stdin.take() {
            stdin_writer = Some(Box::new(stdin));
        }
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(Box::new(out), 1, out_tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(Box::new(err), 2, out_tx.clone())));
        }
    }
    drop(out_tx);
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let Message::Binary(data) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            match data.first() {
                Some(0) => {
                    if let Some(w) = stdin_writer.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        stdin_writer = None;
                    }
                }
                Some(4) => {
                    if let (Some(fd), Ok(size)) = (
                        master_fd,
                        serde_json::from_slice::<serde_json::Value>(&data[1..]),
                    ) {
                        let ws = libc::winsize {
                            ws_row: size["Height"].as_u64().unwrap_or(24) as u16,
                            ws_col: size["Width"].as_u64().unwrap_or(80) as u16,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ on the pty master we own.
                        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
                    }
                }
                // v5: [255, 0] closes stdin.
                Some(255) if data.get(1) == Some(&0) => {
                    if let Some(mut w) = stdin_writer.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });
    let mut wait = Box::pin(child.wait());
    let status = loop {
        tokio::select! {
            Some(msg) = out_rx.recv() => {
                if sink.send(msg).await.is_err() {
                    break None;
                }
            }
            status = &mut wait => break status.ok(),
        }
    };
    // Drain what the process wrote before it ended.
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
    }
    while let Ok(msg) = out_rx.try_recv() {
        let _ = sink.send(msg).await;
    }
    input.abort();
    let code = status.and_then(|s| s.code()).unwrap_or(1);
    let status = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    let _ = sink.send(frame(3, status.to_string().as_bytes())).await;
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

async fn pump(
    mut reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    channel: u8,
    tx: tokio::sync::mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}
