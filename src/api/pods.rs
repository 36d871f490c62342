//! Pod subresources: `binding` (the scheduler's way to set `spec.nodeName`), `log` (streamed from
//! the kubelet) and `exec` (a WebSocket relayed to the kubelet, `v5.channel.k8s.io` or v4).

use std::sync::Arc;

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use super::kubelet_client::{self, KubeletSocket};
use super::object::{now_rfc3339, str_at};
use super::registry::Txn;
use super::request::{Query, Target};
use super::resources::id;
use super::server::Api;
use super::status::{ApiError, ApiResult, FieldError, success_status};

/// `POST pods/NAME/binding`: `Status{Success}`, as the real server answers a binding.
pub fn bind(api: &Api, t: &Target, body: &Value, q: &Query) -> ApiResult<Response> {
    let node = str_at(body, "/target/name").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            t.name.as_deref().unwrap_or_default(),
            &[FieldError::required("target.name", "")],
        ));
    }
    api.registry.txn(|txn| bind_in(txn, t, &node, q))?;
    Ok((StatusCode::CREATED, axum::Json(success_status(json!({})))).into_response())
}

/// Set the pod's node and its PodScheduled condition, unless it is bound or being deleted.
fn bind_in(txn: &mut Txn<'_>, t: &Target, node: &str, q: &Query) -> ApiResult<()> {
    let name = t.name.clone().unwrap_or_default();
    let current = txn.get(t.id, t.ns(), &name).ok_or_else(|| t.not_found())?;
    let mut pod = current.value();
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::conflict(
            "pods",
            &name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let assigned = str_at(&pod, "/spec/nodeName");
    if !assigned.is_empty() {
        return Err(ApiError::conflict(
            "pods",
            &name,
            &format!("pod {name} is already assigned to node {assigned:?}"),
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    let conditions = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    if let Some(conditions) = conditions {
        conditions.retain(|c| str_at(c, "/type") != "PodScheduled");
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
    }
    if q.dry_run() {
        return Ok(());
    }
    txn.put(t.id, pod)?;
    Ok(())
}

/// The pod, the chosen container and the kubelet's address.
struct PodTarget {
    namespace: String,
    pod: String,
    container: String,
    node: String,
    addr: std::net::SocketAddr,
}

fn resolve(api: &Api, t: &Target, q: &Query) -> ApiResult<PodTarget> {
    let name = t.name.clone().unwrap_or_default();
    let namespace = t.namespace.clone().unwrap_or_default();
    let pod = api
        .registry
        .get(id::PODS, &namespace, &name)
        .ok_or_else(|| ApiError::not_found("pods", &name))?
        .value();
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| str_at(c, "/name").to_string())
            .collect()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let annotated = str_at(
                &pod,
                "/metadata/annotations/kubectl.kubernetes.io~1default-container",
            );
            if !annotated.is_empty() {
                annotated.to_string()
            } else if containers.len() == 1 {
                containers[0].clone()
            } else {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
        }
    };
    if !containers.contains(&container)
        && !init.contains(&container)
        && !ephemeral.contains(&container)
    {
        let mut msg = format!(
            "container {container} is not valid for pod {name}, choose one of: [{}]",
            containers.join(" ")
        );
        if !init.is_empty() {
            msg.push_str(&format!(
                " or one of the init containers: [{}]",
                init.join(" ")
            ));
        }
        return Err(ApiError::bad_request(msg));
    }
    let node = str_at(&pod, "/spec/nodeName").to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node_obj = api
        .registry
        .get(id::NODES, "", &node)
        .ok_or_else(|| ApiError::not_found("nodes", &node))?
        .value();
    let addr = kubelet_client::kubelet_address(&node_obj)?;
    Ok(PodTarget {
        namespace,
        pod: name,
        container,
        node,
        addr,
    })
}

fn forward_query(q: &Query, keys: &[&str]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for key in keys {
        for (k, v) in q_all(q, key) {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

fn q_all<'a>(q: &'a Query, key: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    q.pairs().filter(move |(k, _)| *k == key)
}

/// Why a container has no logs to show, from the pod's reported status (the kubelet's
/// `validateContainerLogStatus`, which kube-apiserver passes on as 400). `None`: ask the
/// kubelet, also when the status does not list the container yet.
pub fn log_status_error(pod: &Value, container: &str, previous: bool) -> Option<String> {
    let name = str_at(pod, "/metadata/name");
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|list| {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
    })
    .flatten()
    .find(|s| str_at(s, "/name") == container)?;
    let id_of = |state: &str| status.pointer(&format!("/{state}/terminated/containerID"));
    let has_id = |state: &str| {
        id_of(state)
            .and_then(Value::as_str)
            .is_some_and(|i| !i.is_empty())
    };
    let is_set = |state: &str| status.pointer(state).is_some_and(Value::is_object);
    let prefix = format!("container {container:?} in pod {name:?}");
    if previous {
        return (!has_id("lastState")).then(|| {
            format!("previous terminated container {container:?} in pod {name:?} not found")
        });
    }
    if is_set("/state/running") {
        return None;
    }
    if is_set("/state/terminated") {
        return (!has_id("state") && !has_id("lastState"))
            .then(|| format!("{prefix} is terminated"));
    }
    if is_set("/lastState/terminated") {
        return (!has_id("lastState")).then(|| format!("{prefix} is terminated"));
    }
    if is_set("/state/waiting") {
        return Some(match str_at(status, "/state/waiting/reason") {
            "ErrImagePull" => format!("{prefix} is waiting to start: image can't be pulled"),
            "ImagePullBackOff" => {
                format!("{prefix} is waiting to start: trying and failing to pull image")
            }
            reason => format!("{prefix} is waiting to start: {reason}"),
        });
    }
    Some(format!("{prefix} is waiting to start - no logs yet"))
}

/// `GET pods/NAME/log`.
pub async fn logs(api: &Api, t: &Target, q: &Query) -> ApiResult<Response> {
    let target = resolve(api, t, q)?;
    if let Some(pod) = api.registry.get(id::PODS, &target.namespace, &target.pod)
        && let Some(why) = log_status_error(&pod.value(), &target.container, q.flag("previous"))
    {
        return Err(ApiError::bad_request(why));
    }
    let query = forward_query(
        q,
        &[
            "follow",
            "tailLines",
            "timestamps",
            "previous",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ],
    );
    let path = format!(
        "/containerLogs/{}/{}/{}?{query}",
        target.namespace, target.pod, target.container
    );
    let body = kubelet_client::container_logs(&target.node, target.addr, &path).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

const NORMAL_CLOSURE: u16 = 1000;

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// `GET pods/NAME/exec` with a WebSocket upgrade (kubectl 1.30+). SPDY is not served.
pub async fn exec(api: Arc<Api>, t: &Target, q: &Query, req: Request) -> ApiResult<Response> {
    let target = resolve(&api, t, q)?;
    let (mut parts, _body) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &api).await.map_err(|_| {
        ApiError::bad_request(
            "kemu serves exec over WebSockets only (v5.channel.k8s.io / v4.channel.k8s.io); SPDY (kubectl 1.29 and older) is not supported",
        )
    })?;
    let upgrade = upgrade.protocols(PROTOCOLS);
    let protocol = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(String::from)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "exec needs one of the subprotocols {}",
                PROTOCOLS.join(", ")
            ))
        })?;
    let query = forward_query(q, &["command", "stdin", "stdout", "stderr", "tty"]);
    let path = format!(
        "/exec/{}/{}/{}?{query}",
        target.namespace, target.pod, target.container
    );
    let kubelet = kubelet_client::exec(&target.node, target.addr, &path, &protocol).await?;
    Ok(upgrade.on_upgrade(move |client| relay(client, kubelet)))
}

/// Copy frames both ways until either side closes.
async fn relay(client: WebSocket, kubelet: KubeletSocket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut kubelet_tx, mut kubelet_rx) = kubelet.split();
    let upstream = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let out = match msg {
                ws::Message::Binary(b) => tungstenite::Message::Binary(b),
                ws::Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
                ws::Message::Ping(p) => tungstenite::Message::Ping(p),
                ws::Message::Pong(p) => tungstenite::Message::Pong(p),
                ws::Message::Close(_) => break,
            };
            if kubelet_tx.send(out).await.is_err() {
                break;
            }
        }
        let _ = kubelet_tx.send(tungstenite::Message::Close(None)).await;
    };
    let downstream = async {
        let mut close_code = NORMAL_CLOSURE;
        while let Some(Ok(msg)) = kubelet_rx.next().await {
            let out = match msg {
                tungstenite::Message::Binary(b) => ws::Message::Binary(b),
                tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
                tungstenite::Message::Ping(p) => ws::Message::Ping(p),
                tungstenite::Message::Pong(p) => ws::Message::Pong(p),
                tungstenite::Message::Close(frame) => {
                    close_code = frame.map(|f| u16::from(f.code)).unwrap_or(NORMAL_CLOSURE);
                    break;
                }
                tungstenite::Message::Frame(_) => continue,
            };
            if client_tx.send(out).await.is_err() {
                break;
            }
        }
        // kubectl treats anything but a normal closure (1000) as an error of the session.
        let code = if close_code == 1005 {
            NORMAL_CLOSURE
        } else {
            close_code
        };
        let _ = client_tx
            .send(ws::Message::Close(Some(ws::CloseFrame {
                code,
                reason: "".into(),
            })))
            .await;
    };
    // When the kubelet finishes, the session is over; when the client leaves, stop the kubelet side.
    tokio::select! {
        _ = downstream => {}
        _ = upstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_of_containers_that_never_ran_are_refused_as_the_kubelet_refuses_them() {
        let pod = |status: Value| json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [status]}});
        let c = |state: Value, last: Value| json!({"name": "c", "state": state, "lastState": last});
        let cases = [
            (
                c(
                    json!({"waiting": {"reason": "ContainerCreating"}}),
                    json!({}),
                ),
                false,
                Some("container \"c\" in pod \"p\" is waiting to start: ContainerCreating"),
            ),
            (
                c(
                    json!({"waiting": {"reason": "ImagePullBackOff"}}),
                    json!({}),
                ),
                false,
                Some(
                    "container \"c\" in pod \"p\" is waiting to start: trying and failing to pull image",
                ),
            ),
            (c(json!({"running": {}}), json!({})), false, None),
            (
                c(json!({"running": {}}), json!({})),
                true,
                Some("previous terminated container \"c\" in pod \"p\" not found"),
            ),
            (
                c(
                    json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                    json!({"terminated": {"containerID": "kemu://1"}}),
                ),
                false,
                None,
            ),
            (
                c(
                    json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                    json!({"terminated": {"containerID": "kemu://1"}}),
                ),
                true,
                None,
            ),
            (
                c(json!({"terminated": {"containerID": ""}}), json!({})),
                false,
                Some("container \"c\" in pod \"p\" is terminated"),
            ),
            (
                c(json!({}), json!({})),
                false,
                Some("container \"c\" in pod \"p\" is waiting to start - no logs yet"),
            ),
        ];
        for (status, previous, want) in cases {
            assert_eq!(
                log_status_error(&pod(status.clone()), "c", previous).as_deref(),
                want,
                "{status}"
            );
        }
        // Not reported yet: the kubelet decides.
        assert_eq!(
            log_status_error(&json!({"metadata": {"name": "p"}}), "c", false),
            None
        );
    }
}
