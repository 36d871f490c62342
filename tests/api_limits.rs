//! Hostile and malformed requests against `kemu apiserver`, each answered as kube-apiserver
//! answers it (issue 12, "API input limits"): bodies over 3 MiB get 413 without being read to
//! the end, bodies in unknown media types 415, node ports outside the range 422, reads and
//! watches from a future resourceVersion the "Too large resource version" Status instead of a
//! stream that never ends, and paths with `..` segments a 4xx instead of some other resource.
//! Requests go over a raw socket (`api_support::raw`), byte for byte as written here.

mod api_support;

use api_support::raw::{Reply, Send, request};
use api_support::{Kubectl, Server};
use serde_json::{Value, json};

const LIMIT: usize = 3 * 1024 * 1024;
const JSON: &str = "Content-Type: application/json";

fn pod(name: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    .to_string()
}

fn service(name: &str, node_port: i64) -> String {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name},
            "ports": [{"port": 80, "nodePort": node_port}]}})
    .to_string()
}

/// `(code, reason, message)` of a Status answer, after checking that it is one.
fn status(r: &Reply) -> (u16, String, String) {
    let s = r.json();
    assert_eq!(s["kind"], "Status", "{}", r.text());
    assert_eq!(s["code"], json!(r.status), "{}", r.text());
    (
        r.status,
        s["reason"].as_str().unwrap_or_default().to_string(),
        s["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn too_large() -> (u16, String, String) {
    (
        413,
        "RequestEntityTooLarge".into(),
        "Request entity too large: limit is 3145728".into(),
    )
}

fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path, &[], Send::None)
}

fn post(port: u16, path: &str, body: &str) -> Reply {
    request(port, "POST", path, &[JSON], Send::Whole(body.as_bytes()))
}

#[test]
fn bodies_over_3_mib_get_413_without_being_read_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    let pods = "/api/v1/namespaces/default/pods";

    // 50 MB sent in full while the answer is read.
    let flood = request(port, "POST", pods, &[JSON], Send::Flood { len: 50 << 20 });
    assert_eq!(status(&flood), too_large());

    // 50 MB declared, 4 MiB sent, then nothing: answered without waiting for the rest.
    let stalled = request(
        port,
        "POST",
        pods,
        &[JSON],
        Send::Partial {
            declared: 50 << 20,
            sent: 4 << 20,
        },
    );
    assert_eq!(status(&stalled), too_large());

    // Exactly the limit is fine (a pod padded with spaces: the limit is on raw bytes).
    let mut exact = pod("exact").into_bytes();
    exact.resize(LIMIT, b' ');
    let created = request(port, "POST", pods, &[JSON], Send::Whole(&exact));
    assert_eq!(created.status, 201, "{}", created.text());
    // One byte more is not.
    exact.push(b' ');
    let over = request(port, "POST", pods, &[JSON], Send::Whole(&exact));
    assert_eq!(status(&over), too_large());

    // Every verb and subresource that reads a body goes through the same limit, checked as the
    // bytes arrive: a chunked body one byte over, never finished, is refused all the same.
    let merge = "Content-Type: application/merge-patch+json";
    for (method, path, content_type) in [
        ("POST", pods, JSON),
        ("PUT", "/api/v1/namespaces/default/pods/exact", JSON),
        ("PUT", "/api/v1/namespaces/default/pods/exact/status", JSON),
        ("PATCH", "/api/v1/namespaces/default/pods/exact", merge),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/exact/status",
            merge,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/exact/binding",
            JSON,
        ),
        ("DELETE", "/api/v1/namespaces/default/pods/exact", JSON),
        ("DELETE", pods, JSON),
        (
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            JSON,
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            merge,
        ),
        ("POST", "/api/v1/namespaces", JSON),
        ("PUT", "/api/v1/nodes/n1/status", JSON),
    ] {
        let r = request(
            port,
            method,
            path,
            &[content_type],
            Send::ChunkedUnfinished { len: LIMIT + 1 },
        );
        assert_eq!(status(&r), too_large(), "{method} {path}");
    }
    // None of it touched the pod.
    assert_eq!(
        get(port, "/api/v1/namespaces/default/pods/exact").status,
        200
    );
}

#[test]
fn bodies_in_unknown_media_types_get_415() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    let objects = "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf";
    let patches = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml";
    let unsupported =
        |message: &str| (415, "UnsupportedMediaType".to_string(), message.to_string());

    // A good pod in JSON, labelled text/plain: refused, not read as JSON.
    let body = pod("plain");
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: application/cbor",
    ] {
        let r = request(
            port,
            "POST",
            "/api/v1/namespaces/default/pods",
            &[content_type],
            Send::Whole(body.as_bytes()),
        );
        assert_eq!(status(&r), unsupported(objects), "{content_type}");
    }
    assert_eq!(
        get(port, "/api/v1/namespaces/default/pods/plain").status,
        404
    );

    // The same pod as JSON (with a charset) and as YAML is created.
    let r = request(
        port,
        "POST",
        "/api/v1/namespaces/default/pods",
        &["Content-Type: application/json; charset=utf-8"],
        Send::Whole(body.as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: yaml}\nspec:\n  containers: [{name: c, image: nginx}]\n";
    let r = request(
        port,
        "POST",
        "/api/v1/namespaces/default/pods",
        &["Content-Type: application/yaml"],
        Send::Whole(yaml.as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // YAML labelled JSON is not JSON.
    let r = request(
        port,
        "POST",
        "/api/v1/namespaces/default/pods",
        &[JSON],
        Send::Whole(yaml.as_bytes()),
    );
    assert_eq!(status(&r).0, 400);

    // Updates and delete options take the same types; patches their own.
    let r = request(
        port,
        "PUT",
        "/api/v1/namespaces/default/pods/plain",
        &["Content-Type: text/plain"],
        Send::Whole(body.as_bytes()),
    );
    assert_eq!(status(&r), unsupported(objects));
    let r = request(
        port,
        "DELETE",
        "/api/v1/namespaces/default/pods/plain",
        &["Content-Type: text/plain"],
        Send::Whole(b"{\"gracePeriodSeconds\": 0}"),
    );
    assert_eq!(status(&r), unsupported(objects));
    assert_eq!(
        get(port, "/api/v1/namespaces/default/pods/plain").status,
        200
    );
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/json",
        "Content-Type: application/apply-patch+cbor",
    ] {
        let r = request(
            port,
            "PATCH",
            "/api/v1/namespaces/default/pods/plain",
            &[content_type],
            Send::Whole(b"{\"metadata\": {\"labels\": {\"a\": \"b\"}}}"),
        );
        assert_eq!(status(&r), unsupported(patches), "{content_type}");
    }

    // Accept: kemu writes JSON only, and says so rather than answer JSON to a YAML-only client.
    let r = request(
        port,
        "GET",
        "/api/v1/namespaces/default/pods",
        &["Accept: application/yaml"],
        Send::None,
    );
    assert_eq!(
        status(&r),
        (
            406,
            "NotAcceptable".into(),
            "only the following media types are accepted: application/json".into()
        )
    );
}

#[test]
fn json_patches_of_more_than_10000_operations_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    assert_eq!(
        post(port, "/api/v1/namespaces/default/pods", &pod("p")).status,
        201
    );
    let ops = |n: usize| {
        Value::Array(
            (0..n)
                .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "p"}))
                .collect(),
        )
        .to_string()
    };
    let patch = |body: String| {
        request(
            port,
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            &["Content-Type: application/json-patch+json"],
            Send::Whole(body.as_bytes()),
        )
    };
    assert_eq!(patch(ops(10_000)).status, 200);
    assert_eq!(
        status(&patch(ops(10_001))),
        (
            413,
            "RequestEntityTooLarge".into(),
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001".into()
        )
    );
}

#[test]
fn node_ports_outside_the_range_get_422_and_0_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    let services = "/api/v1/namespaces/default/services";
    let invalid = |name: &str, np: i64| {
        (
            422,
            "Invalid".to_string(),
            format!(
                "Service \"{name}\" is invalid: spec.ports[0].nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"
            ),
        )
    };
    for (name, np) in [("minus", -1), ("one", 1), ("forty", 40000), ("huge", 70000)] {
        let r = post(port, services, &service(name, np));
        assert_eq!(status(&r), invalid(name, np));
        let cause = &r.json()["details"]["causes"][0];
        assert_eq!(cause["field"], "spec.ports[0].nodePort");
        assert_eq!(cause["reason"], "FieldValueInvalid");
        assert_eq!(get(port, &format!("{services}/{name}")).status, 404);
    }
    // 0 asks for a port.
    let r = post(port, services, &service("auto", 0));
    assert_eq!(r.status, 201, "{}", r.text());
    let given = r.json()["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&given), "{given}");
    // An update to -1 is refused too, not quietly given the old port back.
    let mut svc = r.json();
    svc["spec"]["ports"][0]["nodePort"] = json!(-1);
    let r = request(
        port,
        "PUT",
        &format!("{services}/auto"),
        &[JSON],
        Send::Whole(svc.to_string().as_bytes()),
    );
    assert_eq!(status(&r), invalid("auto", -1));
}

/// kubectl prints the server's message for a node port outside the range.
#[test]
fn kubectl_shows_why_a_node_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let kubectl = Kubectl::new("/usr/bin/kubectl", &server);
    for np in [-1, 40000] {
        let manifest = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: 80, nodePort: {np}}}]\n"
        );
        let o = kubectl.with_stdin(&["create", "-f", "-"], &manifest);
        assert!(!o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim(),
            format!(
                "The Service \"web\" is invalid: spec.ports[0].nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"
            )
        );
    }
}

/// kubectl prints the 413 for an object over the limit. It sends the body while it waits for the
/// answer: a server that closed the connection on the unread rest would reset it, and kubectl
/// would report the reset instead (it did, two times in three). Five tries, so that a server
/// that only sometimes resets is caught too.
#[test]
fn kubectl_shows_why_a_big_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let kubectl = Kubectl::new("/usr/bin/kubectl", &server);
    let big = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "big", "annotations": {"padding": "x".repeat(4 << 20)}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    .to_string();
    for _ in 0..5 {
        let o = kubectl.with_stdin(&["create", "--validate=false", "-f", "-"], &big);
        assert!(!o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim(),
            "Error from server (RequestEntityTooLarge): error when creating \"STDIN\": Request entity too large: limit is 3145728"
        );
    }
}

#[test]
fn reads_and_watches_from_a_future_resource_version_end_with_too_large_resource_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    assert_eq!(
        post(port, "/api/v1/namespaces/default/pods", &pod("p")).status,
        201
    );
    let list = get(port, "/api/v1/namespaces/default/pods");
    let current: u64 = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let future = current + 1000;
    let expected = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("Timeout: Too large resource version: {future}, current: {current}"),
        "reason": "Timeout", "code": 504,
        "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1},
    });

    // A watch: 200, one ERROR event with the Status, and the end of the stream (the read gives
    // up only after a minute, so a watch that stays open fails the test).
    for path in [
        format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={future}"),
        format!("/api/v1/watch/namespaces/default/pods?resourceVersion={future}"),
        format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={future}&sendInitialEvents=true&allowWatchBookmarks=true"
        ),
    ] {
        let r = get(port, &path);
        assert_eq!(r.status, 200, "{path}");
        let events: Vec<Value> = r
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            events,
            [json!({"type": "ERROR", "object": expected})],
            "{path}"
        );
    }

    // A list or a get: the Status itself, and Retry-After.
    for path in [
        format!("/api/v1/namespaces/default/pods?resourceVersion={future}"),
        format!("/api/v1/namespaces/default/pods/p?resourceVersion={future}"),
    ] {
        let r = get(port, &path);
        assert_eq!(r.status, 504, "{path}");
        assert_eq!(r.json(), expected, "{path}");
        assert_eq!(r.header("retry-after"), Some("1"), "{path}");
    }

    // The current version is served at once.
    let r = get(
        port,
        &format!("/api/v1/namespaces/default/pods?resourceVersion={current}"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn paths_with_dot_segments_are_never_served_as_another_resource() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    assert_eq!(
        post(port, "/api/v1/namespaces/default/pods", &pod("p")).status,
        201
    );
    assert_eq!(
        post(port, "/api/v1/namespaces/kube-system/pods", &pod("system")).status,
        201
    );
    let not_found = || {
        (
            404,
            "NotFound".to_string(),
            "the server could not find the requested resource".to_string(),
        )
    };
    let invalid = |what: &str, value: &str, why: &str| {
        (
            400,
            "BadRequest".to_string(),
            format!("{what} parameter invalid: {value:?}: {why}"),
        )
    };
    let cases = [
        ("/api/v1/namespaces/../../etc/pods", not_found()),
        (
            "/api/v1/namespaces/default/../kube-system/pods",
            not_found(),
        ),
        (
            "/api/v1/namespaces/default/pods/../../kube-system/pods",
            not_found(),
        ),
        ("/api/v1/namespaces//pods", not_found()),
        (
            "/api/v1/namespaces/../pods",
            invalid("Namespace", "..", "may not be '..'"),
        ),
        (
            "/api/v1/namespaces/%2E%2E/pods",
            invalid("Namespace", "..", "may not be '..'"),
        ),
        (
            "/api/v1/namespaces/default/pods/..",
            invalid("Name", "..", "may not be '..'"),
        ),
        (
            "/api/v1/namespaces/default/pods/.",
            invalid("Name", ".", "may not be '.'"),
        ),
        (
            "/api/v1/namespaces/default/pods/%2e%2e",
            invalid("Name", "..", "may not be '..'"),
        ),
        (
            "/api/v1/namespaces/default/pods/p%2Fx",
            invalid("Name", "p/x", "may not contain '/'"),
        ),
        (
            "/api/v1/namespaces/default/pods/p%25",
            invalid("Name", "p%", "may not contain '%'"),
        ),
        (
            "/api/v1/namespaces/..",
            invalid("Name", "..", "may not be '..'"),
        ),
    ];
    for (path, want) in &cases {
        for method in ["GET", "DELETE"] {
            let r = request(port, method, path, &[], Send::None);
            assert_eq!(&status(&r), want, "{method} {path}");
        }
    }
    // Nothing was deleted on the way.
    assert_eq!(get(port, "/api/v1/namespaces/default/pods/p").status, 200);
    assert_eq!(
        get(port, "/api/v1/namespaces/kube-system/pods/system").status,
        200
    );
    assert_eq!(get(port, "/api/v1/namespaces/default").status, 200);
}
