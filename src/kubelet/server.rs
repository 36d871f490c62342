//! The kubelet's HTTP server on `<node ip>:10250` (plain HTTP), the interface the API server
//! uses for `kubectl logs` and `kubectl exec` (documented in `crate::api::kubelet_client`):
//! `GET /containerLogs/{namespace}/{pod}/{container}` and the WebSocket
//! `GET /exec/{namespace}/{pod}/{container}` (channel protocol v5/v4), plus `/healthz`.
//! The runtime does the work (`logs`, `exec`); this module translates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::worker::Ctx;
use crate::runtime::{ContainerId, ExecRequest, LogOptions, RuntimeError, TerminalSize};

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

/// The latest instance of a pod's container.
fn find(ctx: &Ctx, ns: &str, pod: &str, container: &str) -> Result<ContainerId, Refusal> {
    let registry = ctx.registry.lock().expect("registry");
    let Some(entry) = registry.get(&(ns.to_string(), pod.to_string())) else {
        let text = format!("pod {ns}/{pod} is not running on node {}", ctx.node_name);
        return Err((StatusCode::NOT_FOUND, text));
    };
    let Some(latest) = entry.containers.get(container) else {
        let names: Vec<&str> = entry.containers.keys().map(String::as_str).collect();
        let text = format!(
            "container {container} is not valid for pod {pod}; choose one of: [{}]",
            names.join(" ")
        );
        return Err((StatusCode::BAD_REQUEST, text));
    };
    latest.clone().ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start"),
        )
    })
}

fn refusal(e: RuntimeError) -> Refusal {
    let code = match e {
        RuntimeError::NotFound(_) => StatusCode::NOT_FOUND,
        RuntimeError::NoPrevious { .. }
        | RuntimeError::NotRunning(_)
        | RuntimeError::Invalid { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.to_string())
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query(raw);
    let id = match find(&ctx, &ns, &pod, &container) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let number = |k: &str| {
        q.get(k)
            .and_then(|v| v.first())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let since = number("sinceSeconds")
        .filter(|s| *s >= 0)
        .and_then(|s| SystemTime::now().checked_sub(Duration::from_secs(s as u64)))
        .or_else(|| {
            q.get("sinceTime")
                .and_then(|v| v.first())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(SystemTime::from)
        });
    let options = LogOptions {
        previous: flag(&q, "previous"),
        follow: flag(&q, "follow"),
        tail_lines: number("tailLines").filter(|n| *n >= 0).map(|n| n as u64),
        timestamps: flag(&q, "timestamps"),
        since,
        limit_bytes: number("limitBytes").filter(|n| *n > 0).map(|n| n as u64),
    };
    match ctx.runtime.logs(&id, options).await {
        Ok(stream) => Response::builder()
            .header("content-type", "text/plain")
            .body(Body::from_stream(stream))
            .expect("response"),
        Err(e) => refusal(e).into_response(),
    }
}

async fn exec(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query(raw);
    let id = match find(&ctx, &ns, &pod, &container) {
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
    let request = ExecRequest {
        command,
        tty: flag(&q, "tty"),
        stdin: flag(&q, "stdin"),
    };
    let session = match ctx.runtime.exec(&id, request).await {
        Ok(s) => s,
        Err(e) => return refusal(e).into_response(),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run_exec(socket, session))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Pump an exec session over the channel protocol; end with its status on channel 3.
async fn run_exec(socket: WebSocket, session: crate::runtime::ExecSession) {
    let crate::runtime::ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let (mut sink, mut source) = socket.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
    let mut readers = vec![tokio::spawn(pump(stdout, 1, out_tx.clone()))];
    if let Some(err) = stderr {
        readers.push(tokio::spawn(pump(err, 2, out_tx.clone())));
    }
    drop(out_tx);
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(0) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(4) => {
                    if let (Some(resize), Ok(size)) = (
                        resize.as_ref(),
                        serde_json::from_slice::<serde_json::Value>(&data[1..]),
                    ) {
                        let _ = resize(TerminalSize {
                            width: size["Width"].as_u64().unwrap_or(80) as u16,
                            height: size["Height"].as_u64().unwrap_or(24) as u16,
                        });
                    }
                }
                // v5: [255, 0] closes stdin.
                Some(255) if data.get(1) == Some(&0) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });
    let mut exit = exit;
    let code = loop {
        tokio::select! {
            Some(msg) = out_rx.recv() => {
                if sink.send(msg).await.is_err() {
                    break None;
                }
            }
            code = &mut exit => break code.ok(),
        }
    };
    // Send what the command wrote before it ended.
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
    }
    while let Ok(msg) = out_rx.try_recv() {
        let _ = sink.send(msg).await;
    }
    input.abort();
    let code = code.unwrap_or(1);
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
    mut reader: std::pin::Pin<Box<dyn AsyncRead + Send>>,
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
