//! Issue 14's API features on a live lab, with the real kubectl over the lab's HTTPS endpoint:
//! a service account's token (kubectl sends bearer tokens over HTTPS) is held to RBAC; a
//! Deployment applied server-side is re-applied while the controllers write its status and
//! its pods come and go, and a manager that scaled it meets a conflict; lists come in chunks.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Lab, wait_for};

fn with_stdin(lab: &Lab, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(format!("/run/kemu/{}/kubeconfig", lab.name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn deployment(replicas: u32, tier: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{tier: {tier}}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx\n"
    )
}

fn ready_replicas(lab: &Lab) -> String {
    lab.jsonpath("deployment/web", "{.status.readyReplicas}")
}

#[test]
fn tokens_server_side_apply_and_chunks_on_a_live_lab() {
    let lab = Lab::up("topologies/seed.yaml", "k14", &[]);

    // A service account's token: refused by RBAC until a role is bound.
    lab.kubectl_ok(&["create", "serviceaccount", "robot"]);
    let token = lab.kubectl_ok(&["create", "token", "robot"]);
    let token = token.trim();
    let whoami = lab.kubectl_ok(&["--token", token, "auth", "whoami"]);
    assert!(
        whoami.contains("system:serviceaccount:default:robot"),
        "{whoami}"
    );
    let denied = lab.kubectl(&["--token", token, "get", "pods"]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\""),
        "{err}"
    );
    lab.kubectl_ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=default:robot",
    ]);
    lab.kubectl_ok(&["--token", token, "get", "pods"]);

    // Server-side apply while the controllers write the Deployment's status.
    let apply = |manifest: &str| with_stdin(&lab, &["apply", "--server-side", "-f", "-"], manifest);
    let out = apply(&deployment(2, "front"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("2 ready replicas", Duration::from_secs(180), || {
        (ready_replicas(&lab) == "2").then_some(())
    });
    let out = apply(&deployment(3, "edge"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("3 ready replicas", Duration::from_secs(180), || {
        (ready_replicas(&lab) == "3").then_some(())
    });
    let json: serde_json::Value = serde_json::from_str(&lab.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    assert_eq!(json["metadata"]["labels"]["tier"], "edge");
    let entries = json["metadata"]["managedFields"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["manager"] == "kubectl" && e["operation"] == "Apply"),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["subresource"] == "status" && e["fieldsV1"]["f:status"].is_object()),
        "the controller's status writes are recorded: {entries:?}"
    );

    // kubectl scale (an Update through the scale subresource, its manager named after
    // kubectl's User-Agent) takes replicas over; applying another count is a conflict with it.
    lab.kubectl_ok(&["scale", "deployment", "web", "--replicas=1"]);
    let out = apply(&deployment(3, "edge"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1 at "),
        "{err}"
    );
    assert!(err.contains(": .spec.replicas\n"), "{err}");

    // Lists in chunks of one.
    wait_for("1 ready replica", Duration::from_secs(180), || {
        (ready_replicas(&lab) == "1").then_some(())
    });
    let names = lab.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--chunk-size=1",
        "-o",
        "name",
    ]);
    let all = lab.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(names, all);
    let everything = lab.kubectl_ok(&["get", "clusterroles", "--chunk-size=2", "-o", "name"]);
    assert!(everything.lines().count() >= 7, "{everything}");
}
