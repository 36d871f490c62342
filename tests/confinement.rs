//! End to end on a seed lab, with the real kubectl: a pod is confined whatever its spec asks
//! (issue 12). A hostile pod (root, privileged, SYS_ADMIN, SYS_MODULE and NET_ADMIN, a host
//! command) is root in its own user namespace only, so that, through `kubectl exec`, it can
//! neither read a root-only host file, write outside its own filesystems, load a module, see
//! the host's processes nor change its node's iptables; pods asking for the host's PID or IPC
//! namespace or a host directory are refused with an event.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use kemu::runtime::process::layout::{self, ContainerRecord};

const NODE: &str = "192.168.0.202";
const LONG: Duration = Duration::from_secs(60);

fn pod(name: &str, extra_spec: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: main\n    image: debian\n    command: [sh, -c, \"sleep 3600\"]\n{container}"
    )
}

/// The host PID of a pod's container, from the kubelet's runtime state.
fn container_pid(lab: &Lab, pod: &str) -> u32 {
    let uid = lab.jsonpath(&format!("pod/{pod}"), "{.metadata.uid}");
    let dir = format!(
        "/run/kemu/{}/hosts/{NODE}/kubelet/runtime/containers/{uid}_main_0",
        lab.name
    );
    let record: ContainerRecord = layout::read_json(&Path::new(&dir).join(layout::CONTAINER))
        .unwrap()
        .expect("the container has started");
    record.pid
}

/// A process's uid_map and the `Uid:` line of its status, whitespace-normalised.
fn host_view(pid: u32) -> (String, String) {
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    (words(&map), words(uid))
}

/// The errno with which loading a module must fail in a container: EPERM, its capability check.
/// A kernel built without modules (no /proc/modules) has no such call: ENOSYS for everybody.
fn module_errno() -> &'static str {
    if std::path::Path::new("/proc/modules").exists() {
        "1"
    } else {
        "38"
    }
}

/// Host files the pod can see (under the target directory: the pod's /tmp is its own): a
/// public one and one only root may read. Removed on drop.
struct HostFiles {
    dir: tempfile::TempDir,
}

impl HostFiles {
    fn new() -> HostFiles {
        let dir = tempfile::Builder::new()
            .prefix("kemu-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("public"), "anyone\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        HostFiles { dir }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }
}

#[test]
fn a_hostile_pod_is_root_only_in_its_own_user_namespace() {
    let lab = Lab::up("topologies/seed.yaml", "cf", &[]);
    let node_ns = lab.ns(NODE);
    lab.apply(&pod(
        "hostile",
        "",
        "    securityContext:\n      runAsUser: 0\n      privileged: true\n      capabilities: {add: [SYS_ADMIN, SYS_MODULE, NET_ADMIN]}\n",
    ));
    wait_for("the hostile pod Running", LONG, || {
        (lab.jsonpath("pod/hostile", "{.status.phase}") == "Running").then_some(())
    });
    let pid = container_pid(&lab, "hostile");
    let (uid_map, uid) = host_view(pid);
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/kemu/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let start = record["podIdRange"]["start"].as_u64().unwrap();
    assert_eq!(record["podIdRange"]["size"], 65536);
    assert_ne!(uid_map, "0 0 4294967295", "the identity map");
    assert_eq!(uid_map, format!("0 {start} 65536"));
    assert_eq!(uid, format!("Uid: {start} {start} {start} {start}"));
    assert!(start >= 1 << 30, "pod root is host uid {start}");
    assert_eq!(
        lab.kubectl_ok(&["exec", "hostile", "--", "id", "-u"]),
        "0\n"
    );

    let files = HostFiles::new();
    let marker = unique_name("kemuhostile");
    let script = include_str!("fixtures/confinement/hostile.sh");
    let finit_module = libc::SYS_finit_module.to_string();
    let out = lab.kubectl(&[
        "exec",
        "hostile",
        "--",
        "sh",
        "-c",
        script,
        "hostile",
        &files.secret().to_string_lossy(),
        &files.dir.path().to_string_lossy(),
        &marker,
        &finit_module,
        module_errno(),
        &node_ns,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut breaches: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("breach") || l.starts_with("control"))
        .map(String::from)
        .collect();
    for d in [
        "/",
        "/etc",
        "/usr",
        "/var",
        &*files.dir.path().to_string_lossy(),
    ] {
        let path = Path::new(d).join(&marker);
        if path.exists() {
            let _ = std::fs::remove_file(&path);
            breaches.push(format!("{} exists on the host", path.display()));
        }
    }
    // The node's rules, and the pod's.
    let pod_ns = lab.pod_ns("hostile");
    for ns in [&node_ns, &pod_ns] {
        for argv in [["iptables-save", ""], ["nft", "list ruleset"]] {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", ns, argv[0]]);
            cmd.args(argv[1].split_whitespace());
            let rules = cmd.output().unwrap();
            assert!(rules.status.success(), "{argv:?} in {ns}");
            if String::from_utf8_lossy(&rules.stdout).contains(&marker) {
                breaches.push(format!("{} of {ns} has {marker}", argv[0]));
            }
        }
    }
    assert!(
        breaches.is_empty() && stdout.ends_with("done\n"),
        "{breaches:#?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pod is still the same unprivileged process on the host.
    assert_eq!(host_view(pid), (uid_map, uid));
}

#[test]
fn pods_asking_for_host_namespaces_or_host_directories_are_refused() {
    let lab = Lab::up("topologies/seed.yaml", "cr", &[]);
    let cases = [
        (
            "host-pid",
            "  hostPID: true\n",
            "HostPIDForbidden",
            "spec.hostPID: Forbidden",
        ),
        (
            "host-ipc",
            "  hostIPC: true\n",
            "HostIPCForbidden",
            "spec.hostIPC: Forbidden",
        ),
        (
            "host-path",
            "  volumes:\n  - name: root\n    hostPath: {path: /}\n",
            "HostPathForbidden",
            "spec.volumes[0].hostPath: Forbidden: kemu offers no host directories to pods (volume \"root\", path \"/\")",
        ),
    ];
    for (name, spec, _, _) in &cases {
        lab.apply(&pod(name, spec, ""));
    }
    for (name, _, reason, message) in &cases {
        let object = format!("pod/{name}");
        wait_for(&format!("{name} Failed"), LONG, || {
            (lab.jsonpath(&object, "{.status.phase}") == "Failed").then_some(())
        });
        assert_eq!(lab.jsonpath(&object, "{.status.reason}"), *reason);
        let status = lab.jsonpath(&object, "{.status.message}");
        assert!(
            status.starts_with(&format!("Pod was rejected: {message}")),
            "{status}"
        );
        let events: serde_json::Value =
            serde_json::from_str(&lab.kubectl_ok(&["get", "events", "-o", "json"])).unwrap();
        let events = events["items"].as_array().unwrap();
        let warned = events.iter().any(|e| {
            e["involvedObject"]["name"] == *name
                && e["type"] == "Warning"
                && e["reason"] == *reason
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
        });
        assert!(warned, "no Warning {reason} event for {name}: {events:#?}");
        // Nothing of it was made: no container, no sandbox.
        let uid = lab.jsonpath(&object, "{.metadata.uid}");
        assert!(!kemu::netns::exists(
            &kemu::kubelet::sandbox::pod_namespace(&lab.name, &uid)
        ));
        let containers = format!(
            "/run/kemu/{}/hosts/{NODE}/kubelet/runtime/containers/{uid}_main_0",
            lab.name
        );
        assert!(!Path::new(&containers).exists());
    }
    // A refused pod is deleted like any other.
    lab.kubectl_ok(&["delete", "pod", "host-pid", "--wait=true", "--timeout=30s"]);
    // An ordinary pod on the same node still runs.
    lab.apply(&pod("ordinary", "", ""));
    wait_for("the ordinary pod Running", LONG, || {
        (lab.jsonpath("pod/ordinary", "{.status.phase}") == "Running").then_some(())
    });
}
