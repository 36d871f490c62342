//! kube-rs against `kemu apiserver`: typed list and watch, and durability: after acknowledged
//! writes the server is SIGKILLed and restarted on the same data directory and port; nothing is
//! lost, resourceVersions keep increasing, and a running kube-rs watcher picks up new changes.

mod api_support;

use std::time::Duration;

use api_support::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap()
}

fn rv(p: &Pod) -> u64 {
    p.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_and_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let port = server.port;
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let mut last = 0;
    for name in ["a", "b", "c"] {
        let created = pods
            .create(&PostParams::default(), &pod(name))
            .await
            .unwrap();
        assert!(rv(&created) > last, "resourceVersions increase");
        last = rv(&created);
    }
    let list = pods
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .unwrap();
    let names: Vec<String> = list
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    let svc: Service =
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}))
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    let node_port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .node_port
        .unwrap();

    // A watcher that reports every applied pod name.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = pods.clone();
    let watch_task = tokio::spawn(async move {
        let mut stream = watcher(watched, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            if let Ok(p) = item {
                let _ = tx.send(p.metadata.name.unwrap_or_default());
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);

    // Crash and restart on the same directory and port.
    server.kill();
    let _server = Server::start_on(dir.path(), &format!("127.0.0.1:{port}"));
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3, "no acknowledged write is lost");
    let restored = services.get("s").await.unwrap();
    assert_eq!(
        restored.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some(ip.as_str())
    );
    let d = pods
        .create(&PostParams::default(), &pod("d"))
        .await
        .unwrap();
    assert!(
        rv(&d) > last,
        "resourceVersions keep increasing across restarts"
    );
    // The restored service still holds its ClusterIP and NodePort: asking for them again fails.
    let clash: Service = serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "t"}, "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": node_port}]}}))
    .unwrap();
    let err = services
        .create(&PostParams::default(), &clash)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("provided IP is already allocated"),
        "{err}"
    );
    // The watcher reconnects and sees the new pod.
    loop {
        let name = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("watcher sees d")
            .unwrap();
        if name == "d" {
            break;
        }
    }
    watch_task.abort();
}
