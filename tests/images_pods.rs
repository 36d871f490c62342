//! Pods of images from kemu's store, in a real lab: the test makes an image whose only file
//! of note is the static kemu binary (run as agnhost's `netexec`), loads it as a `docker save`
//! archive and as an OCI layout, and checks that a two-replica Deployment of it answers over
//! a Service from every node, that its containers see the image's files and not the host's,
//! that two containers of a pod share an `emptyDir` and localhost, and that exec and logs
//! work inside the image. Needs root.

mod common;
mod images_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{Lab, wait_for};
use images_support::{Entry::*, *};
use kemu::netns::NetNs;

const TOPOLOGY: &str = "topologies/seed.yaml";
const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
const LONG: Duration = Duration::from_secs(90);

/// The image: `/bin/kemu` and `/etc/hello`, running agnhost's netexec unless told otherwise.
fn image_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[Dir("bin", 0o755), File("bin/kemu", 0o755, &kemu_binary())]),
        layer(&[
            Dir("etc", 0o755),
            File("etc/hello", 0o644, b"from the image\n"),
        ]),
    ]
}

fn image_config(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/kemu", "builtin-image", "agnhost"],
            "Cmd": ["netexec", "--http-port=8080", "--udp-port=-1"],
            "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
            "WorkingDir": "/work",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    }))
    .unwrap()
}

/// An HTTP GET from inside a namespace; the body.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let handle = NetNs::open(ns).expect("open namespace");
    let mut stream = handle
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

fn load(store: &Path, lab: &Lab, file: &Path) {
    let out = kemu_ok(
        store,
        &["image", "load", "--lab", &lab.name, file.to_str().unwrap()],
    );
    assert!(out.starts_with("Loaded image: "), "{out}");
}

fn exec(lab: &Lab, pod: &str, container: &str, argv: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "-c", container, "--"];
    args.extend_from_slice(argv);
    let out = lab.kubectl(&args);
    (out.status.success(), text(&out))
}

#[test]
fn pods_run_images_of_the_store() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let lab = Lab::up_with_env(
        TOPOLOGY,
        "ipod",
        &[],
        &[("KEMU_IMAGE_DIR", store.to_str().unwrap())],
    );
    let work = tempfile::tempdir().unwrap();
    let layers = image_layers();
    let archive = work.path().join("web.tar");
    std::fs::write(
        &archive,
        docker_archive_with_config(&["kemu/web:1"], &layers, image_config(&layers), None),
    )
    .unwrap();
    load(store, &lab, &archive);
    let layout = work.path().join("layout");
    oci_layout(&layout, "kemu/web:oci", &layers, &["/bin/kemu"]);
    load(store, &lab, &layout);

    // A file on the host the containers must not see.
    let canary = work.path().join("host-canary");
    std::fs::write(&canary, "host only\n").unwrap();

    lab.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: kemu/web:1\n        ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    wait_for("both replicas ready", LONG, || {
        (lab.jsonpath("deployment/web", "{.status.readyReplicas}") == "2").then_some(())
    });
    let pods: Vec<String> = lab
        .jsonpath("pods", "{.items[*].metadata.name}")
        .split_whitespace()
        .filter(|n| n.starts_with("web-"))
        .map(String::from)
        .collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let service: SocketAddr = format!("{}:80", lab.jsonpath("service/web", "{.spec.clusterIP}"))
        .parse()
        .unwrap();
    for node in NODES {
        let ns = lab.ns(node);
        // Both replicas answer, from every node.
        let mut seen = std::collections::BTreeSet::new();
        wait_for(
            &format!("both replicas through the Service from {node}"),
            LONG,
            || {
                if let Ok(name) = http_get(&ns, service, "/hostname") {
                    seen.insert(name.trim().to_string());
                }
                (seen.len() == 2).then_some(())
            },
        );
        let expected: std::collections::BTreeSet<String> = pods.iter().cloned().collect();
        assert_eq!(seen, expected, "from {node}");
    }

    // The image's filesystem, config and user; not the host's.
    let pod = &pods[0];
    let (ok, out) = exec(
        &lab,
        pod,
        "web",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            "--file_content=/etc/hello",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("content of file \"/etc/hello\": from the image"),
        "{out}"
    );
    let canary_path = format!("--file_content={}", canary.display());
    let (ok, out) = exec(
        &lab,
        pod,
        "web",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            &canary_path,
        ],
    );
    assert!(!ok, "the host's file is visible in the container: {out}");
    assert!(out.contains("No such file or directory"), "{out}");
    let (ok, out) = exec(&lab, pod, "web", &["sh", "-c", "true"]);
    assert!(!ok && out.contains("executable file not found"), "{out}");
    // The image config: Env and WorkingDir (/work, made since the image lacks it); root in
    // the pod owns the image's files and may write its root filesystem.
    let (ok, out) = exec(
        &lab,
        pod,
        "web",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            "--new_file_0644=/etc/written",
            "--file_content=/etc/written",
        ],
    );
    assert!(ok && out.contains("mount-tester new file"), "{out}");
    let environ = std::fs::read(format!("/proc/{}/environ", main_pid(&lab, pod))).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("FROM_IMAGE=yes") && environ.contains("PATH=/bin"),
        "{environ}"
    );
    let logs = lab.kubectl_ok(&["logs", pod]);
    assert!(logs.contains("Started HTTP server on port 8080"), "{logs}");
    let events = lab.kubectl_ok(&["describe", "pod", pod]);
    assert!(
        events.contains("Container image \"kemu/web:1\" already present on machine"),
        "{events}"
    );

    // Two containers of a pod: a shared emptyDir, and localhost.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: duo}\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeName: 192.168.0.203\n  volumes: [{name: cache, emptyDir: {}}]\n  containers:\n  - name: main\n    image: kemu/web:oci\n    imagePullPolicy: Never\n    command: [/bin/kemu, builtin-image, agnhost]\n    args: [netexec, --http-port=8080, --udp-port=-1]\n    volumeMounts: [{name: cache, mountPath: /cache}]\n  - name: side\n    image: kemu/web:oci\n    imagePullPolicy: Never\n    command: [/bin/kemu, builtin-image, agnhost]\n    args: [netexec, --http-port=8081, --udp-port=-1]\n    volumeMounts: [{name: cache, mountPath: /cache}]\n",
    );
    wait_for("the duo pod ready", LONG, || {
        (lab.jsonpath(
            "pod/duo",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True")
            .then_some(())
    });
    let (ok, out) = exec(
        &lab,
        "duo",
        "side",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            "--new_file_0644=/cache/shared",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = exec(
        &lab,
        "duo",
        "main",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            "--file_content=/cache/shared",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("content of file \"/cache/shared\": mount-tester new file"),
        "{out}"
    );
    let pod_ip: SocketAddr = format!("{}:8081", lab.jsonpath("pod/duo", "{.status.podIP}"))
        .parse()
        .unwrap();
    let dial = http_get(
        &lab.ns("192.168.0.202"),
        pod_ip,
        "/dial?request=hostname&protocol=http&host=127.0.0.1&port=8080&tries=1",
    )
    .unwrap();
    assert_eq!(dial.trim(), r#"{"responses":["duo"]}"#);

    // Removing the images while their pods run keeps the layers under them (the containers'
    // leases); once the pods are gone, gc frees them.
    for image in ["kemu/web:1", "kemu/web:oci"] {
        kemu_ok(store, &["image", "rm", image]);
    }
    assert_eq!(kemu_ok(store, &["image", "ls", "-q"]), "");
    assert_eq!(
        std::fs::read(kemu_binary_in_store(store)).unwrap(),
        kemu_binary(),
        "the running pods' layers were removed"
    );
    let (ok, out) = exec(
        &lab,
        pod,
        "web",
        &[
            "/bin/kemu",
            "builtin-image",
            "agnhost",
            "mounttest",
            "--file_content=/etc/hello",
        ],
    );
    assert!(ok && out.contains("from the image"), "{out}");
    lab.kubectl_ok(&["delete", "deployment", "web", "--wait=false"]);
    lab.kubectl_ok(&["delete", "pod", "duo", "--wait=false"]);
    wait_for("the pods gone", LONG, || {
        lab.jsonpath("pods", "{.items[*].metadata.name}")
            .trim()
            .is_empty()
            .then_some(())
    });
    kemu_ok(store, &["image", "gc"]);
    assert_eq!(
        tree(&store.join("layers")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        tree(&store.join("leases")),
        Vec::<std::path::PathBuf>::new()
    );
}

/// `bin/kemu` in the store's layer directories (the one layer that has it).
fn kemu_binary_in_store(store: &Path) -> std::path::PathBuf {
    let found: Vec<std::path::PathBuf> = tree(&store.join("layers"))
        .into_iter()
        .filter(|p| p.ends_with("fs/bin/kemu"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    store.join("layers").join(&found[0])
}

/// The host PID of a pod's first container.
fn main_pid(lab: &Lab, pod: &str) -> u32 {
    let id = lab.jsonpath(
        &format!("pod/{pod}"),
        "{.status.containerStatuses[0].containerID}",
    );
    let id = id.trim_start_matches("process://");
    let node = lab.jsonpath(&format!("pod/{pod}"), "{.spec.nodeName}");
    let record = format!(
        "/run/kemu/{}/hosts/{node}/kubelet/runtime/containers/{id}/container.json",
        lab.name
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap_or_else(|e| panic!("{record}: {e}")))
            .unwrap();
    json["pid"].as_u64().unwrap() as u32
}
