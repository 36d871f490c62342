//! Paginated lists: `limit` and `continue` as kube-apiserver serves them. The real kubectl
//! (`--chunk-size`) reads every page, as a table and as objects; later pages show the state of
//! the first one however the objects changed in between; a token older than the server's
//! history is 410 Expired with a token that continues at the current state.

mod api_support;

use api_support::raw::{Send, request};
use api_support::{Kubectl, Server, kubectls};
use serde_json::Value;

fn configmaps(n: usize) -> String {
    (0..n)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:02}\n  labels:\n    parity: {}\n", if i % 2 == 0 { "even" } else { "odd" }))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let r = request(port, "GET", path, &[], Send::None);
    (r.status, r.json())
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn kubectl_reads_every_chunk() {
    for (label, bin) in kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let k = Kubectl::new(bin, &server);
        let out = k.with_stdin(&["apply", "-f", "-"], &configmaps(7));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for args in [
            &["get", "configmaps", "--chunk-size=2", "-o", "name"][..],
            &["get", "configmaps", "--chunk-size=3", "--no-headers"],
        ] {
            let out = k.output(args);
            assert!(
                out.status.success(),
                "{label} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let listed: Vec<&str> = text.lines().filter(|l| l.contains("cm-")).collect();
            // kube-root-ca.crt is not created by the API server; 7 ConfigMaps, in order.
            assert_eq!(listed.len(), 7, "{label} {args:?}: {text}");
            assert!(
                listed[0].contains("cm-00") && listed[6].contains("cm-06"),
                "{label}: {text}"
            );
        }
        let out = k.output(&[
            "get",
            "configmaps",
            "--chunk-size=1",
            "-l",
            "parity=odd",
            "-o",
            "name",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "configmap/cm-01\nconfigmap/cm-03\nconfigmap/cm-05\n",
            "{label}"
        );
    }
}

#[test]
fn later_pages_are_served_at_the_first_pages_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let k = Kubectl::new("/usr/bin/kubectl", &server);
    assert!(
        k.with_stdin(&["apply", "-f", "-"], &configmaps(5))
            .status
            .success()
    );

    let (code, first) = get(server.port, &format!("{CMS}?limit=2"));
    assert_eq!(code, 200);
    assert_eq!(names(&first), ["cm-00", "cm-01"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let rv = first["metadata"]["resourceVersion"].clone();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();

    // Changes after the first page do not show in the later ones.
    assert!(k.output(&["delete", "configmap", "cm-03"]).status.success());
    assert!(
        k.output(&["create", "configmap", "cm-02a"])
            .status
            .success()
    );
    assert!(
        k.output(&["label", "configmap", "cm-04", "late=yes"])
            .status
            .success()
    );
    let (code, second) = get(server.port, &format!("{CMS}?limit=2&continue={token}"));
    assert_eq!(code, 200, "{second}");
    assert_eq!(names(&second), ["cm-02", "cm-03"]);
    assert_eq!(second["metadata"]["resourceVersion"], rv);
    assert_eq!(second["metadata"]["remainingItemCount"], 1);
    let token = second["metadata"]["continue"].as_str().unwrap();
    let (_, last) = get(server.port, &format!("{CMS}?limit=2&continue={token}"));
    assert_eq!(names(&last), ["cm-04"]);
    assert!(last["items"][0]["metadata"]["labels"].get("late").is_none());
    assert!(last["metadata"].get("continue").is_none());
    assert!(last["metadata"].get("remainingItemCount").is_none());

    // A selector counts matching objects only, and gets no remaining count.
    let (_, even) = get(
        server.port,
        &format!("{CMS}?limit=1&labelSelector=parity%3Deven"),
    );
    assert_eq!(names(&even), ["cm-00"]);
    assert!(even["metadata"].get("remainingItemCount").is_none());
    assert!(even["metadata"]["continue"].is_string());

    let (code, bad) = get(server.port, &format!("{CMS}?continue=bm90LWEtdG9rZW4="));
    assert_eq!(code, 400, "{bad}");
    assert_eq!(bad["reason"], "BadRequest");
}

#[test]
fn an_expired_token_is_410_with_an_inconsistent_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), "127.0.0.1:0", &["--watch-history=4"]);
    let k = Kubectl::new("/usr/bin/kubectl", &server);
    assert!(
        k.with_stdin(&["apply", "-f", "-"], &configmaps(4))
            .status
            .success()
    );
    let (_, first) = get(server.port, &format!("{CMS}?limit=2"));
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    // More changes than the history keeps.
    for i in 0..5 {
        assert!(
            k.output(&["create", "configmap", &format!("late-{i}")])
                .status
                .success()
        );
    }
    let (code, expired) = get(server.port, &format!("{CMS}?limit=2&continue={token}"));
    assert_eq!(code, 410, "{expired}");
    assert_eq!(expired["reason"], "Expired");
    assert!(expired["message"].as_str().unwrap().starts_with(
        "The provided continue parameter is too old to display a consistent list result."
    ));
    // The offered token continues after the same key, at the current state.
    let offered = expired["metadata"]["continue"].as_str().unwrap();
    let (code, rest) = get(server.port, &format!("{CMS}?continue={offered}"));
    assert_eq!(code, 200, "{rest}");
    assert_eq!(
        names(&rest),
        [
            "cm-02", "cm-03", "late-0", "late-1", "late-2", "late-3", "late-4"
        ]
    );
    // kubectl reports it as kube's error.
    let out = k.output(&["get", "--raw", &format!("{CMS}?limit=2&continue={token}")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(Expired)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
