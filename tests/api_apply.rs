//! Server-side apply with the real kubectl: a field the applier stops applying is removed, a
//! second manager that would change a field conflicts (kube's message and exit code) until it
//! forces, a field both apply with the same value is shared and survives one of them dropping
//! it, and every write records its manager in `managedFields`.

mod api_support;

use api_support::{Kubectl, Server, kubectls};
use serde_json::Value;

fn configmap(data: &[(&str, &str)]) -> String {
    let mut s =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n");
    for (k, v) in data {
        s.push_str(&format!("  {k}: {v:?}\n"));
    }
    s
}

fn run(k: &Kubectl, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = k.with_stdin(args, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apply(k: &Kubectl, manager: &str, manifest: &str, force: bool) -> (bool, String, String) {
    let who = format!("--field-manager={manager}");
    let mut args = vec!["apply", "--server-side", who.as_str(), "-f", "-"];
    if force {
        args.push("--force-conflicts");
    }
    run(k, &args, manifest)
}

fn get(k: &Kubectl) -> Value {
    let out = k.output(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Managers of the object and the `data` keys each owns.
fn owners(cm: &Value) -> Vec<(String, String, Vec<String>)> {
    cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let keys = e["fieldsV1"]["f:data"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            (
                e["manager"].as_str().unwrap().to_string(),
                e["operation"].as_str().unwrap().to_string(),
                keys,
            )
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn server_side_apply_owns_removes_and_conflicts() {
    for (label, bin) in kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let k = Kubectl::new(bin, &server);

        let (ok, out, err) = apply(&k, "alice", &configmap(&[("a", "1"), ("b", "2")]), false);
        assert!(ok, "{label}: {err}");
        assert_eq!(
            out.trim(),
            "configmap/settings serverside-applied",
            "{label}"
        );
        // Dropping b from alice's configuration removes it.
        assert!(
            apply(&k, "alice", &configmap(&[("a", "1")]), false).0,
            "{label}"
        );
        let cm = get(&k);
        assert_eq!(cm["data"], serde_json::json!({"a": "1"}), "{label}");
        assert_eq!(
            owners(&cm),
            [("alice".into(), "Apply".into(), s(&["f:a"]))],
            "{label}"
        );

        // bob wants another a: a conflict with alice, kubectl's exit 1 and kube's message.
        let (ok, _, err) = apply(&k, "bob", &configmap(&[("a", "9"), ("c", "3")]), false);
        assert!(!ok, "{label}");
        assert!(
            err.starts_with(
                "error: Apply failed with 1 conflict: conflict with \"alice\": .data.a\n"
            ),
            "{label}: {err}"
        );
        assert_eq!(
            get(&k)["data"],
            serde_json::json!({"a": "1"}),
            "{label}: nothing changed"
        );
        // Forced, bob takes a over; alice is left with nothing and her entry goes.
        let (ok, _, err) = apply(&k, "bob", &configmap(&[("a", "9"), ("c", "3")]), true);
        assert!(ok, "{label}: {err}");
        let cm = get(&k);
        assert_eq!(
            cm["data"],
            serde_json::json!({"a": "9", "c": "3"}),
            "{label}"
        );
        assert_eq!(
            owners(&cm),
            [("bob".into(), "Apply".into(), s(&["f:a", "f:c"]))],
            "{label}"
        );

        // Same value: shared; carol dropping it leaves it to bob.
        assert!(
            apply(&k, "carol", &configmap(&[("c", "3")]), false).0,
            "{label}"
        );
        assert!(
            apply(&k, "carol", &configmap(&[("d", "4")]), false).0,
            "{label}"
        );
        let cm = get(&k);
        assert_eq!(
            cm["data"],
            serde_json::json!({"a": "9", "c": "3", "d": "4"}),
            "{label}"
        );

        // An update (kubectl edit-like patch) takes what it changes, and the applier then
        // conflicts with it.
        let (ok, _, err) = run(
            &k,
            &[
                "patch",
                "configmap",
                "settings",
                "-p",
                r#"{"data":{"a":"10"}}"#,
            ],
            "",
        );
        assert!(ok, "{label}: {err}");
        let patcher = owners(&get(&k))
            .into_iter()
            .find(|(_, op, keys)| op == "Update" && keys == &s(&["f:a"]))
            .unwrap_or_else(|| panic!("{label}: no Update manager owns a"));
        assert_eq!(patcher.0, "kubectl-patch", "{label}");
        let (ok, _, err) = apply(&k, "bob", &configmap(&[("a", "9"), ("c", "3")]), false);
        assert!(!ok, "{label}");
        assert!(
            err.contains("conflict with \"kubectl-patch\" using v1 at "),
            "{label}: {err}"
        );
    }
}

#[test]
fn client_side_then_server_side_apply_conflicts_on_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let k = Kubectl::new("/usr/bin/kubectl", &server);
    let deployment = |replicas: u32, image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
        )
    };
    assert!(run(&k, &["apply", "-f", "-"], &deployment(2, "nginx:1")).0);
    let (ok, _, err) = run(
        &k,
        &["apply", "--server-side", "-f", "-"],
        &deployment(3, "nginx:2"),
    );
    assert!(!ok);
    assert!(
        err.starts_with("error: Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1 at "),
        "{err}"
    );
    assert!(
        err.contains("\n- .spec.replicas\n- .spec.template.spec.containers[name=\"web\"].image\n"),
        "{err}"
    );
    // Unchanged values are no conflict.
    let (ok, _, err) = run(
        &k,
        &["apply", "--server-side", "-f", "-"],
        &deployment(2, "nginx:1"),
    );
    assert!(ok, "{err}");
}
