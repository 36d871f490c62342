//! How the API server reaches a kubelet for `pods/log` and `pods/exec`.
//!
//! # The kubelet interface (implemented by `kemu kubelet`)
//! The kubelet serves plain HTTP/1.1 on `<node InternalIP>:<port>`, where the port is the Node's
//! `status.daemonEndpoints.kubeletEndpoint.Port` (default 10250):
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&timestamps=&previous=&sinceSeconds=&limitBytes=`
//!   answers `200 text/plain` with the log bytes; with `follow=true` the body is streamed (chunked)
//!   until the container stops or the client goes away. Errors are a non-2xx status with a text body.
//! - `GET /exec/{namespace}/{pod}/{container}?command=..&command=..&stdin=&stdout=&stderr=&tty=`
//!   is a WebSocket upgrade speaking `v5.channel.k8s.io` (or `v4.channel.k8s.io`): binary
//!   messages whose first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 error/status JSON,
//!   4 resize, 255 close-channel in v5). The kubelet ends with a `Status` on channel 3, then a
//!   close frame. The API server relays frames unchanged in both directions.
//!
//! Everything here is transport: finding the node's address, connecting, and mapping failures
//! to API errors with a clear message.

use std::net::SocketAddr;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::object::str_at;
use super::status::ApiError;

/// The default kubelet port.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Where the kubelet of `node` listens.
pub fn kubelet_address(node: &Value) -> Result<SocketAddr, ApiError> {
    let name = str_at(node, "/metadata/name");
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array);
    let ip = addresses
        .and_then(|list| {
            list.iter()
                .find(|a| str_at(a, "/type") == "InternalIP")
                .or_else(|| list.first())
                .map(|a| str_at(a, "/address").to_string())
        })
        .filter(|s| !s.is_empty())
        .or_else(|| {
            name.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| ip.to_string())
        })
        .ok_or_else(|| {
            ApiError::internal(format!("node {name:?} has no address to reach its kubelet"))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p <= 65535)
        .unwrap_or(u64::from(DEFAULT_KUBELET_PORT)) as u16;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| ApiError::internal(format!("node {name:?} has an invalid address {ip:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

fn unreachable(node: &str, addr: SocketAddr, err: impl std::fmt::Display) -> ApiError {
    ApiError {
        code: 502,
        reason: "InternalError",
        message: format!("error talking to the kubelet of node {node:?} at {addr}: {err}"),
        details: None,
        continue_token: None,
    }
}

/// `GET /containerLogs/...` on the kubelet; the body streams as it arrives.
pub async fn container_logs(
    node: &str,
    addr: SocketAddr,
    path_and_query: &str,
) -> Result<Body, ApiError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(node, addr, e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(node, addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("kubelet log connection ended: {e}");
        }
    });
    let request = hyper::Request::get(path_and_query)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(node, addr, e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        // The kubelet's 400 (a container that cannot show logs) and 404 pass through.
        let (code, reason) = match status.as_u16() {
            400 => (400, "BadRequest"),
            404 => (404, "NotFound"),
            _ => (500, "InternalError"),
        };
        return Err(ApiError {
            code,
            reason,
            message: if text.is_empty() {
                format!("the kubelet answered {status}")
            } else {
                text
            },
            details: None,
            continue_token: None,
        });
    }
    Ok(Body::new(response.into_body()))
}

/// The WebSocket to the kubelet's exec endpoint.
pub type KubeletSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Open the kubelet's exec WebSocket, offering `protocol`.
pub async fn exec(
    node: &str,
    addr: SocketAddr,
    path_and_query: &str,
    protocol: &str,
) -> Result<KubeletSocket, ApiError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(node, addr, e))?;
    let mut request = format!("ws://{addr}{path_and_query}")
        .into_client_request()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol
            .parse()
            .map_err(|_| ApiError::bad_request("invalid subprotocol"))?,
    );
    let (socket, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| unreachable(node, addr, e))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses() {
        let node = json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.168.0.202"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}}});
        assert_eq!(
            kubelet_address(&node).unwrap().to_string(),
            "192.168.0.202:10255"
        );
        let by_name = json!({"metadata": {"name": "192.168.0.203"}});
        assert_eq!(
            kubelet_address(&by_name).unwrap().to_string(),
            "192.168.0.203:10250"
        );
        assert_eq!(
            kubelet_address(&json!({"metadata": {"name": "x"}}))
                .unwrap_err()
                .code,
            500
        );
    }
}
