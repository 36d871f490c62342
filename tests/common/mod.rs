//! Shared helpers for the end-to-end tests: labs with unique names that are torn down on drop,
//! the root namespace's state for before/after comparisons, and TCP probes run from inside a
//! lab's namespaces. These tests need root; without it they fail (they never skip).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kemu::netns::NetNs;

/// The kemu binary under test.
pub fn kemu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kemu"))
}

/// Run kemu, returning its output; panics with both streams if it fails and `ok` is set.
pub fn run_kemu(args: &[&str]) -> Output {
    let out = kemu().args(args).output().expect("run kemu");
    assert!(
        out.status.success(),
        "kemu {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A lab name no other test (or test run) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100000)
}

/// A running lab, torn down (and checked clean) when dropped.
pub struct Lab {
    pub name: String,
    pub up_output: Output,
}

impl Lab {
    /// `kemu up FILE --name <unique>` with extra arguments.
    pub fn up(file: &str, prefix: &str, extra: &[&str]) -> Lab {
        Lab::up_with_env(file, prefix, extra, &[])
    }

    /// `up` with extra environment variables (e.g. `SUDO_UID` to act as `sudo` does).
    pub fn up_with_env(file: &str, prefix: &str, extra: &[&str], env: &[(&str, &str)]) -> Lab {
        let name = unique_name(prefix);
        let mut args = vec!["up", file, "--name", &name];
        // Never touch the user's kubeconfig from tests unless a test asks for a file.
        if !extra.iter().any(|a| a.starts_with("--kubeconfig")) {
            args.push("--no-kubeconfig");
        }
        args.extend_from_slice(extra);
        let up_output = kemu()
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .expect("run kemu up");
        assert!(
            up_output.status.success(),
            "kemu {} failed ({}):\n{}\n{}",
            args.join(" "),
            up_output.status,
            String::from_utf8_lossy(&up_output.stdout),
            String::from_utf8_lossy(&up_output.stderr)
        );
        Lab { name, up_output }
    }

    /// The namespace of a host.
    pub fn ns(&self, host: &str) -> String {
        format!("kemu-{}-{host}", self.name)
    }

    /// Run a command on a host through `kemu exec`.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name, host, "--"];
        args.extend_from_slice(argv);
        kemu().args(&args).output().expect("run kemu exec")
    }

    pub fn stderr_of_up(&self) -> String {
        String::from_utf8_lossy(&self.up_output.stderr).into_owned()
    }

    /// The `warning:` lines `up` printed (its progress lines left out).
    pub fn warnings_of_up(&self) -> String {
        self.stderr_of_up()
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = kemu()
            .args(["down", &self.name])
            .output()
            .expect("run kemu down");
        if !std::thread::panicking() {
            assert!(
                out.status.success(),
                "kemu down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_lab_gone(&self.name);
        }
    }
}

/// Nothing of the lab remains: no namespace, no state, no registered process.
pub fn assert_lab_gone(name: &str) {
    let prefix = format!("kemu-{name}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/netns/{prefix}")),
        "namespace mounts left behind"
    );
    assert!(
        !Path::new("/run/kemu").join(name).exists(),
        "state directory left behind"
    );
    if let Ok(lab) = kemu::topology::LabName::parse(name)
        && let Some(cgroup) = kemu::lab::cgroup::LabCgroup::of(&lab)
    {
        assert!(
            !cgroup.dir.exists(),
            "cgroup {} left behind",
            cgroup.dir.display()
        );
    }
    // Every process kemu starts for a lab (agents, container shims) names the lab's state
    // directory or its namespaces on its command line or in its environment.
    let marker = format!("/run/kemu/{name}/");
    let lab_env = format!("KEMU_LAB={name}\0");
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        let cmdline = String::from_utf8_lossy(&cmdline);
        let environ = String::from_utf8_lossy(&environ);
        if !zombie && (cmdline.contains(&marker) || environ.contains(&lab_env)) {
            left.push(format!("{pid}: {}", cmdline.replace('\0', " ")));
        }
    }
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// What must not change in the root namespace when a lab goes up and down.
#[derive(Debug, PartialEq, Eq)]
pub struct RootState {
    pub links: String,
    pub addresses: String,
    pub routes: String,
    pub iptables: String,
    pub nftables: String,
    pub mounts: Vec<String>,
}

fn text(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RootState {
    pub fn capture() -> RootState {
        let strip_counters = |s: String| -> String {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.find(" [") {
                    Some(i) if l.starts_with(':') => l[..i].to_string(),
                    _ => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Other tests' labs pin namespaces under /run/netns concurrently; those mounts are
        // checked per lab by `assert_lab_gone`.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| !l.contains(" /run/netns"))
            .map(|l| l.split_whitespace().skip(4).take(1).collect::<String>())
            .collect();
        RootState {
            links: text("ip", &["-o", "link", "show"]),
            addresses: text("ip", &["-o", "addr", "show"]),
            routes: text("ip", &["route", "show", "table", "all"]),
            iptables: strip_counters(text("iptables-save", &[])),
            nftables: text("nft", &["list", "ruleset"]),
            mounts,
        }
    }
}

/// A TCP listener bound inside a namespace; it answers each connection with `reply`.
pub fn serve_in(ns: &str, addr: &str, reply: &'static str) -> SocketAddr {
    let handle = NetNs::open(ns).expect("open namespace");
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = handle
        .run(move || TcpListener::bind(addr))
        .expect("bind in namespace");
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    local
}

/// Connect from inside a namespace and read the reply.
pub fn fetch_from(ns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let handle = NetNs::open(ns).expect("open namespace");
    let mut stream = handle
        .run(move || TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A temporary file holding `contents`.
pub fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

/// Packet counters of an interface inside a namespace.
pub fn counters(ns: &str, dev: &str) -> kemu::netlink::LinkCounters {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = NetNs::open(ns).unwrap();
        let nl = kemu::netlink::Netlink::open(&handle).unwrap();
        nl.counters(dev).await.unwrap().expect("interface exists")
    })
}

impl Lab {
    /// Run the real kubectl against the lab (through the supervisor's forwarded port).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(format!("/run/kemu/{}/kubeconfig", self.name))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(format!("/run/kemu/{}/kubeconfig", self.name))
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A field of an object through jsonpath, e.g. `("pod/web", "{.status.podIP}")`.
    pub fn jsonpath(&self, object: &str, path: &str) -> String {
        self.kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
    }

    /// Where the lab's API server answers its own hosts: the master's namespace and
    /// `http://<master>:8080` (the machine's endpoint is HTTPS with a client certificate).
    pub fn api_endpoint(&self) -> ApiEndpoint {
        let name = kemu::topology::LabName::parse(&self.name).unwrap();
        let (_, record) = kemu::lab::state::LabRecord::open(&name).unwrap();
        let master = record.topology.master();
        ApiEndpoint {
            netns: record.topology.host_namespace(master),
            url: format!("http://{}:8080", master.ip),
        }
    }

    /// The network namespace of a pod.
    pub fn pod_ns(&self, pod: &str) -> String {
        kemu::kubelet::sandbox::pod_namespace(
            &self.name,
            &self.jsonpath(&format!("pod/{pod}"), "{.metadata.uid}"),
        )
    }
}

/// A lab's API server as its hosts reach it; see [`Lab::api_endpoint`].
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    pub netns: String,
    pub url: String,
}

impl ApiEndpoint {
    /// A kube-rs client over the master's namespace. Call it inside the tokio runtime that
    /// will use it.
    pub fn client(&self) -> kube::Client {
        let ns = std::sync::Arc::new(NetNs::open(&self.netns).unwrap());
        kemu::client::connect_in(&self.url, ns).unwrap()
    }
}

/// Poll `check` until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
