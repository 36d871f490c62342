//! Service-account tokens and RBAC against `kemu apiserver`, with the real kubectl: `create
//! token` issues a token that authenticates as the service account (kubectl sends bearer tokens
//! over HTTPS only, so the token's own requests are raw HTTP here), RBAC refuses it until a
//! RoleBinding grants a role, `auth can-i`/`auth whoami` answer for impersonated service
//! accounts, a deleted service account's tokens stop working, and a restarted server with the
//! same signing key still accepts the tokens it issued.

mod api_support;

use api_support::raw::{Reply, Send, request};
use api_support::{Kubectl, Server, kubectls};

const ROBOT: &str = "system:serviceaccount:default:robot";

fn ok(k: &Kubectl, args: &[&str]) -> String {
    let out = k.output(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl auth can-i` prints yes or no (and exits 1 on no).
fn can_i(k: &Kubectl, args: &[&str]) -> String {
    let out = k.output(&[&["auth", "can-i"], args].concat());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn with_token(port: u16, method: &str, path: &str, token: &str, body: Option<&str>) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    let headers = [auth.as_str(), "Content-Type: application/json"];
    match body {
        Some(b) => request(port, method, path, &headers, Send::Whole(b.as_bytes())),
        None => request(port, method, path, &headers, Send::None),
    }
}

const WHOAMI: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
const PODS: &str = "/api/v1/namespaces/default/pods";

#[test]
fn service_account_tokens_authenticate_and_rbac_authorizes() {
    for (label, bin) in kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let k = Kubectl::new(bin, &server);
        ok(&k, &["create", "serviceaccount", "robot"]);
        let token = ok(&k, &["create", "token", "robot", "--duration=1h"]);
        let token = token.trim();

        // The token is the service account's identity ...
        let me = with_token(
            server.port,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            token,
            Some(WHOAMI),
        );
        assert_eq!(me.status, 201, "{label}: {}", me.text());
        let info = &me.json()["status"]["userInfo"];
        assert_eq!(info["username"], ROBOT, "{label}");
        assert_eq!(
            info["groups"],
            serde_json::json!([
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]),
            "{label}"
        );
        // ... which RBAC holds to nothing until a role is bound.
        let denied = with_token(server.port, "GET", PODS, token, None);
        assert_eq!(denied.status, 403, "{label}");
        assert_eq!(
            denied.json()["message"],
            format!(
                "pods is forbidden: User \"{ROBOT}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            ),
            "{label}"
        );
        let as_robot = format!("--as={ROBOT}");
        assert_eq!(can_i(&k, &["list", "pods", &as_robot]), "no", "{label}");
        assert_eq!(
            can_i(&k, &["create", "pods"]),
            "yes",
            "{label}: the admin may"
        );
        let whoami = ok(&k, &["auth", "whoami", &as_robot]);
        assert!(whoami.contains(ROBOT), "{label}: {whoami}");

        ok(
            &k,
            &[
                "create",
                "rolebinding",
                "robot-view",
                "--clusterrole=view",
                "--serviceaccount=default:robot",
            ],
        );
        assert_eq!(can_i(&k, &["list", "pods", &as_robot]), "yes", "{label}");
        assert_eq!(
            can_i(&k, &["delete", "pods", &as_robot]),
            "no",
            "{label}: view does not delete"
        );
        assert_eq!(
            can_i(&k, &["list", "pods", &as_robot, "-n", "kube-system"]),
            "no",
            "{label}: a RoleBinding is its namespace's"
        );
        assert_eq!(
            with_token(server.port, "GET", PODS, token, None).status,
            200,
            "{label}"
        );
        let list = ok(&k, &["auth", "can-i", "--list", &as_robot]);
        assert!(
            list.lines()
                .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
            "{label}: {list}"
        );

        // Only the admin impersonates.
        let impersonating = request(
            server.port,
            "GET",
            PODS,
            &[
                &format!("Authorization: Bearer {token}"),
                "Impersonate-User: kubernetes-admin",
            ],
            Send::None,
        );
        assert_eq!(
            impersonating.status,
            403,
            "{label}: {}",
            impersonating.text()
        );

        // A token that is not one of ours, or whose service account is gone, is 401.
        assert_eq!(
            with_token(server.port, "GET", PODS, "not-a-token", None).status,
            401,
            "{label}"
        );
        let mut forged: Vec<&str> = token.split('.').collect();
        forged[2] = "AAAA";
        assert_eq!(
            with_token(server.port, "GET", PODS, &forged.join("."), None).status,
            401,
            "{label}"
        );
        ok(&k, &["delete", "serviceaccount", "robot"]);
        ok(&k, &["create", "serviceaccount", "robot"]);
        let gone = with_token(server.port, "GET", PODS, token, None);
        assert_eq!(gone.status, 401, "{label}: a new robot is not the old one");
        assert_eq!(gone.json()["reason"], "Unauthorized", "{label}");
    }
}

#[test]
fn token_requests_are_validated_and_reviewed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let k = Kubectl::new("/usr/bin/kubectl", &server);
    ok(&k, &["create", "serviceaccount", "robot"]);
    let short = k.output(&["create", "token", "robot", "--duration=5m"]);
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr)
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let missing = k.output(&["create", "token", "nobody"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("serviceaccounts \"nobody\" not found")
    );

    // A token for another audience does not open this server, but a TokenReview for that
    // audience accepts it.
    let vault = ok(&k, &["create", "token", "robot", "--audience=vault"]);
    let vault = vault.trim();
    assert_eq!(
        with_token(server.port, "GET", PODS, vault, None).status,
        401
    );
    let review = |token: &str, audiences: &str| {
        let body = format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}","audiences":{audiences}}}}}"#
        );
        let r = request(
            server.port,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &["Content-Type: application/json"],
            Send::Whole(body.as_bytes()),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["status"].clone()
    };
    let accepted = review(vault, r#"["vault"]"#);
    assert_eq!(accepted["authenticated"], true);
    assert_eq!(accepted["user"]["username"], ROBOT);
    assert_eq!(review(vault, "[]")["authenticated"], false);
}

#[test]
fn tokens_signed_with_the_key_file_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.key");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let key_arg = format!("--service-account-signing-key-file={}", key.display());
    let mut server = Server::start_with(&data, "127.0.0.1:0", &[&key_arg]);
    let k = Kubectl::new("/usr/bin/kubectl", &server);
    ok(&k, &["create", "serviceaccount", "robot"]);
    let token = ok(&k, &["create", "token", "robot"]);
    let token = token.trim();
    let whoami = |port| {
        with_token(
            port,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            token,
            Some(WHOAMI),
        )
    };
    assert_eq!(whoami(server.port).status, 201);
    let listen = format!("127.0.0.1:{}", server.port);
    server.kill();
    let server = Server::start_with(&data, &listen, &[&key_arg]);
    let me = whoami(server.port);
    assert_eq!(me.status, 201, "{}", me.text());
    assert_eq!(me.json()["status"]["userInfo"]["username"], ROBOT);
    drop(server);

    // Without the key file, the server signs with a key of its own and the old token is refused.
    let server = Server::start_with(&data, &listen, &[]);
    assert_eq!(whoami(server.port).status, 401);
}
