//! Pulling from a real registry over a lab's network: Debian's `docker-registry` (the CNCF
//! distribution registry) runs on the lab's `client` host (192.168.0.100, inside the lab's
//! namespace only), the test pushes an image it made into it, and a minion pulls it the way
//! its kubelet would, with and without htpasswd credentials. A wrong tag gives ErrImagePull,
//! then ImagePullBackOff with the kubelet's message. Needs root, `docker-registry` and
//! `htpasswd` (apache2-utils).

mod common;
mod images_support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Lab, wait_for};
use images_support::{Entry::*, *};
use kemu::images::manager::{EnsureRequest, EventType, ImageManager, PullPolicy};
use kemu::images::oci::registry::RegistryOptions;
use kemu::images::store::Store;
use kemu::netns::NetNs;

const TOPOLOGY: &str = "topologies/seed.yaml";
const REGISTRY_HOST: &str = "client";

/// A registry process, killed (by its PID) when dropped.
struct Registry {
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `docker-registry` inside the lab host's namespace, on `addr`, storing in `dir`.
fn start_registry(lab: &Lab, addr: &str, dir: &Path, htpasswd: Option<&Path>) -> Registry {
    let auth = htpasswd.map_or(String::new(), |p| {
        format!(
            "auth:\n  htpasswd:\n    realm: kemu-test\n    path: {}\n",
            p.display()
        )
    });
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
        dir.join("data").display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    // `ip netns exec` execs the registry, so the child's PID is the registry's.
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(REGISTRY_HOST),
            "docker-registry",
            "serve",
        ])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start docker-registry (apt-get install docker-registry)");
    let registry = Registry { child };
    let ns = lab.ns(REGISTRY_HOST);
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    wait_for("the registry to listen", Duration::from_secs(20), || {
        let handle = NetNs::open(&ns).unwrap();
        handle
            .run(move || std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)))
            .ok()
    });
    registry
}

/// Push an image made of `layers` to `target` from inside the registry host's namespace.
fn push(lab: &Lab, target: &str, layers: Vec<Vec<u8>>, creds: Option<(&str, &str)>) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::{IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE};
    use oci_client::secrets::RegistryAuth;
    let config = config(&layers, &["/bin/kemu", "--version"]);
    let target = target.to_string();
    let auth = match creds {
        Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
        None => RegistryAuth::Anonymous,
    };
    let ns = NetNs::open(&lab.ns(REGISTRY_HOST)).unwrap();
    ns.run(move || {
        let _ = kemu::lab::forward::crypto_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let reference: oci_client::Reference = target.parse().unwrap();
        let layers: Vec<ImageLayer> = layers
            .into_iter()
            .map(|l| ImageLayer::new(l, IMAGE_LAYER_MEDIA_TYPE.to_string(), None))
            .collect();
        let config = Config::new(config, IMAGE_CONFIG_MEDIA_TYPE.to_string(), None);
        rt.block_on(client.push(&reference, &layers, config, &auth, None))
            .map(|_| ())
            .map_err(std::io::Error::other)
    })
    .expect("push the test image");
}

fn image_layers() -> Vec<Vec<u8>> {
    vec![layer(&[
        Dir("bin", 0o755),
        File("bin/kemu", 0o755, &kemu_binary()),
        Dir("etc", 0o755),
        File("etc/hello", 0o644, b"from the lab registry\n"),
    ])]
}

#[test]
fn a_node_pulls_from_a_registry_on_the_lab_network() {
    let lab = Lab::up(TOPOLOGY, "img", &["--network-only"]);
    let reg_dir = tempfile::tempdir().unwrap();
    let _registry = start_registry(&lab, "192.168.0.100:5000", reg_dir.path(), None);
    push(
        &lab,
        "192.168.0.100:5000/kemu/hello:1",
        image_layers(),
        None,
    );

    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let image = "192.168.0.100:5000/kemu/hello:1";
    let pull = |node: &str, image: &str| {
        kemu_at(
            store,
            &[
                "image",
                "pull",
                "--lab",
                &lab.name,
                "--node",
                node,
                "--plain-http",
                "192.168.0.100:5000",
                image,
            ],
        )
    };
    let out = pull("192.168.0.202", image);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "Normal",
            "Pulling",
            "Pulling",
            "image",
            "\"192.168.0.100:5000/kemu/hello:1\""
        ]
    );
    assert!(
        lines[1].contains("Pulled")
            && lines[1]
                .contains("Successfully pulled image \"192.168.0.100:5000/kemu/hello:1\" in "),
        "{printed}"
    );
    assert!(
        lines[1].contains(" including waiting). Image size: "),
        "{printed}"
    );

    // Present for this lab now, with its files; a second pull (IfNotPresent) does nothing.
    let ls = kemu_ok(store, &["image", "ls", "--lab", &lab.name]);
    assert!(ls.contains("192.168.0.100:5000/kemu/hello"), "{ls}");
    assert!(!kemu_ok(store, &["image", "ls", "--lab", "someotherlab"]).contains("kemu/hello"));
    let prepared = Store::open(store)
        .unwrap()
        .prepare(
            &kemu::images::store::index::Query::Name(image.into()),
            Some(&lab.name),
        )
        .unwrap();
    assert_eq!(
        std::fs::read(prepared.layer_dirs[0].join("bin/kemu")).unwrap(),
        kemu_binary()
    );
    let out = pull("192.168.0.203", image);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "Container image \"192.168.0.100:5000/kemu/hello:1\" already present on machine"
        ),
        "{}",
        text(&out)
    );

    // A tag the registry does not have: ErrImagePull, then ImagePullBackOff carrying the
    // error, then (after the back-off) another pull. The kubelet-facing manager, on a node.
    let lab_name = lab.name.clone();
    let store_path = store.to_path_buf();
    let ns = NetNs::open(&lab.ns("192.168.0.203")).unwrap();
    let rounds = ns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let manager = ImageManager::new(
                Store::open(store_path).map_err(std::io::Error::other)?,
                RegistryOptions {
                    plain_http: vec!["192.168.0.100:5000".into()],
                    ..RegistryOptions::default()
                },
            );
            let req = EnsureRequest {
                pod_uid: "0b1c",
                image: "192.168.0.100:5000/kemu/hello:nope",
                policy: PullPolicy::IfNotPresent,
                pull_secrets: &[],
                lab: Some(&lab_name),
            };
            let t0 = Instant::now();
            let mut rounds = Vec::new();
            for at in [0, 1, 11] {
                let mut events = Vec::new();
                let result =
                    rt.block_on(manager.ensure(&req, t0 + Duration::from_secs(at), &mut events));
                rounds.push((events, result.expect_err("the tag does not exist")));
            }
            Ok(rounds)
        })
        .unwrap();
    let err = "rpc error: code = NotFound desc = failed to pull and unpack image \
               \"192.168.0.100:5000/kemu/hello:nope\": failed to resolve reference \
               \"192.168.0.100:5000/kemu/hello:nope\": 192.168.0.100:5000/kemu/hello:nope: not found";
    let shown = |events: &[kemu::images::manager::ImageEvent]| -> Vec<(EventType, &str, String)> {
        events
            .iter()
            .map(|e| (e.event_type, e.reason, e.message.clone()))
            .collect()
    };
    let (events, failure) = &rounds[0];
    assert_eq!(
        shown(events),
        [
            (
                EventType::Normal,
                "Pulling",
                "Pulling image \"192.168.0.100:5000/kemu/hello:nope\"".into()
            ),
            (
                EventType::Warning,
                "Failed",
                format!("Failed to pull image \"192.168.0.100:5000/kemu/hello:nope\": {err}")
            ),
            (EventType::Warning, "Failed", "Error: ErrImagePull".into()),
        ]
    );
    assert_eq!(
        (failure.reason, failure.message.as_str()),
        ("ErrImagePull", err)
    );
    let (events, failure) = &rounds[1];
    assert_eq!(
        shown(events),
        [
            (
                EventType::Normal,
                "BackOff",
                "Back-off pulling image \"192.168.0.100:5000/kemu/hello:nope\"".into()
            ),
            (
                EventType::Warning,
                "Failed",
                "Error: ImagePullBackOff".into()
            ),
        ]
    );
    assert_eq!(failure.reason, "ImagePullBackOff");
    assert_eq!(
        failure.message,
        format!(
            "Back-off pulling image \"192.168.0.100:5000/kemu/hello:nope\": ErrImagePull: {err}"
        )
    );
    let (events, failure) = &rounds[2];
    assert_eq!(events[0].reason, "Pulling");
    assert_eq!(failure.reason, "ErrImagePull");
}

#[test]
fn a_registry_with_htpasswd_needs_the_pull_secret() {
    let lab = Lab::up(TOPOLOGY, "imgauth", &["--network-only"]);
    let reg_dir = tempfile::tempdir().unwrap();
    let htpasswd = reg_dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc", htpasswd.to_str().unwrap(), "kemu", "s3cret"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(out.status.success(), "{}", text(&out));
    let _registry = start_registry(&lab, "192.168.0.100:5001", reg_dir.path(), Some(&htpasswd));
    let image = "192.168.0.100:5001/kemu/private:1";
    push(&lab, image, image_layers(), Some(("kemu", "s3cret")));

    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let work = tempfile::tempdir().unwrap();
    let secret = |name: &str, user: &str, pass: &str| {
        let path = work.path().join(name);
        let auth = data_encoding::BASE64.encode(format!("{user}:{pass}").as_bytes());
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"192.168.0.100:5001": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        path.display().to_string()
    };
    let pull = |extra: &[&str]| {
        let mut args = vec![
            "image",
            "pull",
            "--lab",
            &lab.name,
            "--node",
            "192.168.0.202",
            "--plain-http",
            "192.168.0.100:5001",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        kemu_at(store, &args)
    };

    let anonymous = pull(&[]);
    let printed = text(&anonymous);
    assert!(!anonymous.status.success(), "{printed}");
    assert!(printed.contains("Failed to pull image \"192.168.0.100:5001/kemu/private:1\": rpc error: code = Unknown desc = failed to pull and unpack image"), "{printed}");
    assert!(printed.contains("401 Unauthorized"), "{printed}");
    assert!(printed.contains("ErrImagePull: "), "{printed}");

    let wrong = secret("wrong.json", "kemu", "guess");
    let out = pull(&["--pull-secret", &wrong]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(kemu_ok(store, &["image", "ls", "-q"]), "");

    let right = secret("right.json", "kemu", "s3cret");
    let out = pull(&["--pull-secret", &right]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Successfully pulled image \"192.168.0.100:5001/kemu/private:1\""),
        "{}",
        text(&out)
    );
    assert!(kemu_ok(store, &["image", "ls"]).contains("192.168.0.100:5001/kemu/private"));
}

#[test]
fn a_pod_pulls_from_the_lab_registry_and_backs_off_on_a_wrong_tag() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().to_str().unwrap().to_string();
    let lab = Lab::up_with_env(
        TOPOLOGY,
        "imgpod",
        &[],
        &[
            ("KEMU_IMAGE_DIR", &store),
            ("KEMU_PLAIN_HTTP_REGISTRIES", "192.168.0.100:5002"),
        ],
    );
    let reg_dir = tempfile::tempdir().unwrap();
    let _registry = start_registry(&lab, "192.168.0.100:5002", reg_dir.path(), None);
    push(
        &lab,
        "192.168.0.100:5002/kemu/hello:1",
        image_layers(),
        None,
    );
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: 192.168.0.202\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [/bin/kemu, builtin-image, agnhost, pause]\n"
        )
    };
    lab.apply(&pod("good", "192.168.0.100:5002/kemu/hello:1"));
    lab.apply(&pod("wrong", "192.168.0.100:5002/kemu/hello:nope"));
    let long = Duration::from_secs(90);
    wait_for("the pulled pod running", long, || {
        (lab.jsonpath("pod/good", "{.status.phase}") == "Running").then_some(())
    });
    let events = lab.kubectl_ok(&["describe", "pod", "good"]);
    assert!(
        events.contains("Pulling image \"192.168.0.100:5002/kemu/hello:1\""),
        "{events}"
    );
    assert!(
        events.contains("Successfully pulled image \"192.168.0.100:5002/kemu/hello:1\" in "),
        "{events}"
    );
    // Reason and message from one read: the state moves on between two reads.
    let waiting = |pod: &str| {
        let both = lab.jsonpath(
            &format!("pod/{pod}"),
            "{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
        );
        let (reason, message) = both.split_once('|').unwrap_or((&both, ""));
        (reason.to_string(), message.to_string())
    };
    let err = "rpc error: code = NotFound desc = failed to pull and unpack image \
               \"192.168.0.100:5002/kemu/hello:nope\": failed to resolve reference \
               \"192.168.0.100:5002/kemu/hello:nope\": 192.168.0.100:5002/kemu/hello:nope: not found";
    let (_, message) = wait_for("ErrImagePull", long, || {
        let (reason, message) = waiting("wrong");
        (reason == "ErrImagePull").then_some((reason, message))
    });
    assert_eq!(message, err);
    let (_, message) = wait_for("ImagePullBackOff", long, || {
        let (reason, message) = waiting("wrong");
        (reason == "ImagePullBackOff").then_some((reason, message))
    });
    assert_eq!(
        message,
        format!(
            "Back-off pulling image \"192.168.0.100:5002/kemu/hello:nope\": ErrImagePull: {err}"
        )
    );
    let events = lab.kubectl_ok(&["describe", "pod", "wrong"]);
    for expected in [
        "Failed to pull image \"192.168.0.100:5002/kemu/hello:nope\": rpc error: code = NotFound",
        "Error: ErrImagePull",
        "Back-off pulling image \"192.168.0.100:5002/kemu/hello:nope\"",
        "Error: ImagePullBackOff",
    ] {
        assert!(events.contains(expected), "{expected}\n{events}");
    }
}
