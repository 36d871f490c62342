//! Who may use a lab's API from the machine: only holders of the lab's client certificate.
//!
//! The supervisor's endpoint on 127.0.0.1 speaks HTTPS with the lab's CA; anonymous requests
//! get kube-apiserver's 401, plain HTTP gets 400, a certificate from another CA is refused.
//! The kubeconfig that carries the key is mode 0600 and, under sudo, belongs to the user who
//! ran sudo (here `nobody`, through `SUDO_UID`/`SUDO_GID`), who can then use the lab with the
//! real kubectl; `down` gives back the context that was current before.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Lab, kemu};

const NOBODY: u32 = 65534;

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o777)
}

#[test]
fn only_the_lab_certificate_opens_the_api_and_the_kubeconfig_belongs_to_the_sudo_user() {
    // A kubeconfig of the "user", with a context of their own, in a directory they can reach.
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let kube_dir = home.path().join(".kube");
    let config = kube_dir.join("config");
    std::fs::create_dir(&kube_dir).unwrap();
    std::os::unix::fs::chown(&kube_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: https://127.0.0.1:1}\ncontexts:\n- name: other\n  context: {cluster: other, user: other}\nusers:\n- name: other\n  user: {}\ncurrent-context: other\n",
    )
    .unwrap();
    std::os::unix::fs::chown(&config, Some(NOBODY), Some(NOBODY)).unwrap();

    let lab = Lab::up_with_env(
        "topologies/seed.yaml",
        "acc",
        &["--kubeconfig", config.to_str().unwrap()],
        &[
            ("SUDO_UID", "65534"),
            ("SUDO_GID", "65534"),
            ("SUDO_USER", "nobody"),
        ],
    );
    let state = Path::new("/run/kemu").join(&lab.name);
    let port = std::fs::read_to_string(state.join("api-port")).unwrap();
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces", port.trim());
    let pki = state.join("pki");
    let file = |name: &str| pki.join(name).to_str().unwrap().to_string();

    // Keys and kubeconfigs are private; both kubeconfigs belong to the sudo user.
    for key in ["ca.key", "apiserver.key", "admin.key"] {
        assert_eq!(owner_and_mode(&pki.join(key)), (0, 0, 0o600), "{key}");
    }
    assert_eq!(owner_and_mode(&config), (NOBODY, NOBODY, 0o600));
    assert_eq!(
        owner_and_mode(&state.join("kubeconfig")),
        (NOBODY, NOBODY, 0o600)
    );

    // Anonymous: 401 with a Kubernetes Status, as kube-apiserver answers.
    let (_, body) = curl(&["--cacert", &file("ca.crt"), &url]);
    let status: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 401);
    assert_eq!(status["reason"], "Unauthorized");
    // Plain HTTP on the HTTPS port.
    let (_, body) = curl(&[&url.replace("https://", "http://")]);
    assert!(
        body.contains("Client sent an HTTP request to an HTTPS server"),
        "{body}"
    );
    // A client certificate of another CA: refused during the handshake.
    let stranger =
        kemu::lab::pki::generate(&"other".parse().unwrap(), &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), &stranger.admin_cert).unwrap();
    std::fs::write(dir.path().join("c.key"), &stranger.admin_key).unwrap();
    let (ok, body) = curl(&[
        "--cacert",
        &file("ca.crt"),
        "--cert",
        dir.path().join("c.crt").to_str().unwrap(),
        "--key",
        dir.path().join("c.key").to_str().unwrap(),
        &url,
    ]);
    assert!(!ok && !body.contains("NamespaceList"), "{body}");
    // The lab's own client certificate: served, over a server certificate the lab CA signed.
    let (ok, body) = curl(&[
        "--cacert",
        &file("ca.crt"),
        "--cert",
        &file("admin.crt"),
        "--key",
        &file("admin.key"),
        &url,
    ]);
    assert!(ok && body.contains("NamespaceList"), "{body}");

    // The sudo user drives the lab with the real kubectl from their own kubeconfig.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "kubectl", "--kubeconfig"])
        .arg(&config)
        .args(["get", "nodes", "-o", "name"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // ... and nobody else on the machine can read the lab's key.
    let out = Command::new("runuser")
        .args(["-u", "daemon", "--", "cat"])
        .arg(state.join("kubeconfig"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "another user read the kubeconfig");

    // `down` removes the lab's entries and gives back the context that was current.
    let down = kemu().args(["down", &lab.name]).output().unwrap();
    assert!(down.status.success());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("current-context: other"), "{text}");
    assert!(!text.contains(&format!("kemu-{}", lab.name)), "{text}");
    assert_eq!(owner_and_mode(&config), (NOBODY, NOBODY, 0o600));
}
