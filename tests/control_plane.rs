//! End to end: the control plane as processes inside a lab. kubectl (several versions) reaches
//! the API server from inside the lab (`kemu exec ... kubectl -s http://192.168.0.201:8080`)
//! and from the machine itself (the supervisor's forwarded port); the API server survives a
//! SIGKILL without losing anything, and its clients (kubelets, a kube-rs watcher) reconnect.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

const TOPOLOGY: &str = "tests/fixtures/topologies/ok/kubelet.yaml";
const LONG: Duration = Duration::from_secs(30);

fn kubectl_builds() -> Vec<String> {
    let mut builds = vec!["/usr/bin/kubectl".to_string()];
    for v in ["1.30", "1.33"] {
        let path = format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}");
        assert!(std::path::Path::new(&path).exists(), "{path} is missing");
        builds.push(path);
    }
    builds
}

#[test]
fn kubectl_from_inside_the_lab_and_from_the_machine() {
    let lab = Lab::up(TOPOLOGY, "cp", &[]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  nodeName: 192.168.0.203\n  containers:\n  - name: nginx\n    image: nginx\n    ports: [{containerPort: 80}]\n";
    lab.apply(pod);
    for kubectl in kubectl_builds() {
        let cache = tempfile::tempdir().unwrap();
        let cache = cache.path().to_str().unwrap();
        let run = |args: &[&str]| {
            let mut argv = vec![
                kubectl.as_str(),
                "--cache-dir",
                cache,
                "-s",
                "http://192.168.0.201:8080",
            ];
            argv.extend_from_slice(args);
            let out = lab.exec("192.168.0.202", &argv);
            assert!(
                out.status.success(),
                "{kubectl} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let version = run(&["version"]);
        assert!(
            version.contains("Server Version: v1.32.4"),
            "{kubectl}: {version}"
        );
        let nodes = run(&["get", "nodes"]);
        for n in ["192.168.0.201", "192.168.0.202", "192.168.0.203"] {
            assert!(
                nodes
                    .lines()
                    .any(|l| l.starts_with(n) && l.contains(" Ready ")),
                "{kubectl}: {nodes}"
            );
        }
        let svc = run(&["get", "svc", "kubernetes"]);
        assert!(
            svc.contains("192.168.3.1") && svc.contains("443/TCP"),
            "{svc}"
        );
        wait_for("pod web Running", LONG, || {
            run(&["get", "pod", "web"])
                .contains("Running")
                .then_some(())
        });
        let wide = run(&["get", "pod", "web", "-o", "wide"]);
        assert!(
            wide.contains("192.168.0.203") && wide.contains("172.16.3."),
            "{wide}"
        );
    }
    // From the machine itself, through the forwarded port and the lab's kubeconfig.
    let nodes = lab.kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(
        nodes,
        "node/192.168.0.201\nnode/192.168.0.202\nnode/192.168.0.203\n"
    );
}

#[test]
fn the_api_server_survives_sigkill_and_its_clients_reconnect() {
    let lab = Lab::up(TOPOLOGY, "ck", &[]);
    let api = lab.api_endpoint();
    // A kube-rs watcher that must see pods created before and after the restart. (A kube
    // client belongs to the runtime it was made in: make it in the watcher's own.)
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = api.client();
            let pods: kube::Api<Pod> = kube::Api::namespaced(client, "default");
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                    let _ = tx.send(p.metadata.name.unwrap_or_default());
                }
            }
        });
    });
    let manifest = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: 192.168.0.202\n  containers:\n  - name: c\n    image: kemu/pause\n"
        )
    };
    lab.apply(&manifest("before"));
    let rv_before: u64 = lab
        .jsonpath("pod/before", "{.metadata.resourceVersion}")
        .parse()
        .unwrap();
    wait_for("the watcher sees `before`", LONG, || {
        rx.try_iter().any(|n| n == "before").then_some(())
    });

    let status: serde_json::Value =
        serde_json::from_slice(&run_kemu(&["status", &lab.name, "-o", "json"]).stdout).unwrap();
    let apiserver = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "apiserver")
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apiserver as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The supervisor restarts it; every acknowledged write is still there.
    wait_for("the API server back", LONG, || {
        lab.kubectl(&["get", "pod", "before"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(lab.jsonpath("pod/before", "{.metadata.name}"), "before");
    lab.apply(&manifest("after"));
    let rv_after: u64 = lab
        .jsonpath("pod/after", "{.metadata.resourceVersion}")
        .parse()
        .unwrap();
    assert!(
        rv_after > rv_before,
        "resourceVersions keep increasing: {rv_before} then {rv_after}"
    );
    wait_for("the watcher sees `after`", LONG, || {
        rx.try_iter().any(|n| n == "after").then_some(())
    });
    // The kubelets reconnected too: the new pod runs and the nodes stay Ready.
    wait_for("pod after Running", LONG, || {
        (lab.jsonpath("pod/after", "{.status.phase}") == "Running").then_some(())
    });
    let nodes = lab.kubectl_ok(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");
}
