//! `kubectl logs` and `kubectl exec` through `kemu apiserver` to a fake kubelet that speaks the
//! interface documented in `kemu::api::kubelet_client`, plus the errors of both paths.
//! kubectl 1.29 and older need SPDY for exec, which kemu does not serve: they are not run here.

mod api_support;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery};
use axum::response::Response;
use axum::routing::get;

use api_support::{Kubectl, Server, kubectls, settings, transcript};

async fn container_logs(
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> String {
    format!(
        "log line 1 of {ns}/{pod}/{container}\nlog line 2 ({})\n",
        q.unwrap_or_default()
    )
}

async fn exec(ws: WebSocketUpgrade, RawQuery(q): RawQuery) -> Response {
    let commands: Vec<String> = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run(socket, commands))
}

async fn run(mut socket: WebSocket, commands: Vec<String>) {
    let frame = |channel: u8, data: &[u8]| {
        let mut v = vec![channel];
        v.extend_from_slice(data);
        Message::Binary(v.into())
    };
    let status = if commands.first().map(String::as_str) == Some("false") {
        serde_json::json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}})
    } else {
        let out = format!("ran: {}\n", commands.join(" "));
        let _ = socket.send(frame(1, out.as_bytes())).await;
        serde_json::json!({"metadata": {}, "status": "Success"})
    };
    let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

/// Start the fake kubelet on a free loopback port.
async fn fake_kubelet() -> u16 {
    let app = axum::Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn objects(kubelet_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: minion-1}}
status:
  addresses: [{{type: InternalIP, address: 127.0.0.1}}]
  daemonEndpoints: {{kubeletEndpoint: {{Port: {kubelet_port}}}}}
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: v1
kind: Node
metadata: {{name: minion-down}}
status:
  addresses: [{{type: InternalIP, address: 127.0.0.1}}]
  daemonEndpoints: {{kubeletEndpoint: {{Port: 1}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: minion-1
  containers: [{{name: nginx, image: nginx}}, {{name: sidecar, image: busybox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: lonely}}
spec:
  nodeName: minion-down
  containers: [{{name: c, image: nginx}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: starting}}
spec:
  nodeName: minion-1
  containers: [{{name: c, image: nginx}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: unscheduled}}
spec:
  containers: [{{name: c, image: nginx}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_through_the_kubelet() {
    let kubelet_port = fake_kubelet().await;
    for (name, bin) in kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let kubectl = Kubectl::new(bin, &server);
        let manifest = objects(kubelet_port);
        let transcript = tokio::task::spawn_blocking(move || {
            let created = kubectl.with_stdin(&["create", "-f", "-"], &manifest);
            assert!(
                created.status.success(),
                "{}",
                String::from_utf8_lossy(&created.stderr)
            );
            // The kubelet reports a container that has not started.
            let waiting = r#"{"status":{"containerStatuses":[{"name":"c","image":"nginx","imageID":"","ready":false,"restartCount":0,"state":{"waiting":{"reason":"ContainerCreating"}}}]}}"#;
            let reported = kubectl.output(&[
                "patch", "pod", "starting", "--subresource=status", "--type=merge", "-p", waiting,
            ]);
            assert!(reported.status.success(), "{}", String::from_utf8_lossy(&reported.stderr));
            let mut out = String::new();
            for args in [
                &["logs", "web", "-c", "nginx"][..],
                &["logs", "web", "-c", "sidecar", "--tail=5", "--timestamps"],
                &["logs", "web", "-c", "nope"],
                &["logs", "starting"],
                &["logs", "starting", "--previous"],
                &["logs", "unscheduled"],
                &["logs", "lonely"],
                &["logs", "ghost"],
                &["exec", "web", "-c", "nginx", "--", "echo", "hello", "world"],
                &["exec", "web", "-c", "nginx", "--", "false"],
                &["exec", "unscheduled", "--", "ls"],
            ] {
                let o = kubectl.output(args);
                out.push_str(&transcript(args, &o));
            }
            drop(server);
            out
        })
        .await
        .unwrap();
        let port = kubelet_port.to_string();
        let mut s = settings();
        s.add_filter(&format!(r"\b{port}\b"), "[KUBELET-PORT]");
        s.bind(|| insta::assert_snapshot!(format!("logs_exec_{name}"), transcript));
    }
}
