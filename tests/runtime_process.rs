//! The process runtime against the kernel: containers in throwaway network namespaces
//! (`kemutest-rt-*`, deleted on drop, also when a test fails). These tests need root; without
//! it they fail (they never skip).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kemu::runtime::process::ProcessRuntime;
use kemu::runtime::process::userns::IdRange;
use kemu::runtime::{
    ContainerConfig, ContainerId, ContainerPort, ContainerRuntime, ContainerState, ExecRequest,
    LogOptions, SandboxInfo, SecurityContext,
};
use tokio::io::AsyncReadExt;

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100000)
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with loopback up, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root");
        let name = unique("kemutest-rt-");
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run a command inside the namespace.
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The host ids of these tests' containers: the last of the labs' slots, which a lab gets only
/// when 16383 others are up.
fn test_ids() -> IdRange {
    kemu::lab::idrange::slot(kemu::lab::idrange::SLOTS - 1)
}

/// A runtime root on the host filesystem (visible, read-only, inside containers), removed
/// on drop after every container in it was removed.
struct Root {
    dir: PathBuf,
    runtime: ProcessRuntime,
}

impl Root {
    fn new() -> Root {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("rt-"));
        std::fs::create_dir_all(&dir).unwrap();
        let runtime = ProcessRuntime::new(&dir, env!("CARGO_BIN_EXE_kemu"), test_ids()).unwrap();
        Root { dir, runtime }
    }

    fn sandbox(&self, ns: &Netns, pod: &str) -> SandboxInfo {
        let uid = unique("uid-");
        SandboxInfo {
            pod_name: pod.into(),
            namespace: "default".into(),
            pod_dir: self.dir.join("pods").join(&uid),
            pod_uid: uid,
            netns_path: ns.path(),
            hostname: pod.into(),
            etc_hosts: format!("127.0.0.1\tlocalhost\n10.250.0.2\t{pod}\n"),
            resolv_conf: "nameserver 10.250.0.10\nsearch default.svc.cluster.local\n".into(),
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        let leftovers = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut pids = Vec::new();
                for c in runtime.list().await.unwrap_or_default() {
                    pids.extend(c.pid);
                    let _ = runtime.remove(&c.id).await;
                }
                pids
            })
        })
        .join()
        .unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&*self.dir.to_string_lossy()),
            "a container's mount leaked into the host"
        );
        let _ = std::fs::remove_dir_all(&self.dir);
        for pid in leftovers {
            assert!(!alive(pid), "container process {pid} survived its removal");
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Run a command in a container: (exit code, stdout, stderr).
async fn exec(rt: &ProcessRuntime, id: &ContainerId, argv: &[&str]) -> (i32, String, String) {
    let mut session = rt
        .exec(
            id,
            ExecRequest {
                command: argv.iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
            },
        )
        .await
        .expect("exec");
    let mut out = String::new();
    let mut err = String::new();
    let mut stderr = session.stderr.take().unwrap();
    let (a, b) = tokio::join!(
        session.stdout.read_to_string(&mut out),
        stderr.read_to_string(&mut err)
    );
    a.unwrap();
    b.unwrap();
    let code = session.exit.await.expect("exit code");
    (code, out, err)
}

async fn wait_exited(rt: &ProcessRuntime, id: &ContainerId) -> ContainerState {
    for _ in 0..500 {
        let status = rt.status(id).await.unwrap();
        if matches!(status.state, ContainerState::Exited { .. }) {
            return status.state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("container {id} did not exit");
}

async fn logs(rt: &ProcessRuntime, id: &ContainerId, options: LogOptions) -> String {
    let stream = rt.logs(id, options).await.expect("logs");
    let chunks: Vec<_> = stream.collect().await;
    chunks
        .into_iter()
        .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
        .collect()
}

/// Retry a check for a few seconds (servers need a moment to bind).
async fn eventually(mut check: impl FnMut() -> Option<String>) -> String {
    for _ in 0..100 {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met in time");
}

#[tokio::test]
async fn nginx_container_serves_the_welcome_page_in_its_own_namespaces() {
    let ns = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "nginx-controller-abcde");
    let mut nginx = container("nginx", "nginx:1.27", &[]);
    nginx.ports = vec![ContainerPort {
        name: None,
        container_port: 80,
        protocol: "TCP".into(),
    }];
    let id = rt
        .create_and_start(&sandbox, &nginx)
        .await
        .expect("start nginx");

    let page = eventually(|| {
        let out = ns.exec(&["curl", "-s", "-i", "http://127.0.0.1/"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(page.contains("Server: nginx/1.27.0"), "{page}");
    assert!(
        page.contains("X-Kemu-Pod: nginx-controller-abcde"),
        "{page}"
    );
    assert!(
        page.contains("<p><em>Thank you for using nginx.</em></p>"),
        "{page}"
    );

    // PID 1 is nginx; hostname; user; read-only root; private /tmp; pod files.
    let (code, out, _) = exec(rt, &id, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("kemu\0builtin-image\0nginx\0"), "{out:?}");
    // Its own PID, mount, UTS and IPC namespaces; the pod's network namespace.
    let (_, out, _) = exec(
        rt,
        &id,
        &[
            "sh",
            "-c",
            "for n in pid mnt uts ipc net; do readlink /proc/1/ns/$n; done",
        ],
    )
    .await;
    let inside: Vec<&str> = out.lines().collect();
    for (i, n) in ["pid", "mnt", "uts", "ipc"].iter().enumerate() {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            inside[i],
            host.to_string_lossy(),
            "the container shares the host's {n} namespace"
        );
    }
    use std::os::unix::fs::MetadataExt;
    let netns_inode = std::fs::metadata(ns.path()).unwrap().ino();
    assert_eq!(inside[4], format!("net:[{netns_inode}]"));
    let (_, out, _) = exec(rt, &id, &["grep", " / / ", "/proc/self/mountinfo"]).await;
    assert!(out.contains(" / / ro,"), "{out}");
    let (_, out, _) = exec(rt, &id, &["hostname"]).await;
    assert_eq!(out.trim(), "nginx-controller-abcde");
    let (_, out, _) = exec(rt, &id, &["id", "-u"]).await;
    assert_eq!(out.trim(), "65534");
    let (_, out, _) = exec(rt, &id, &["id", "-g"]).await;
    assert_eq!(out.trim(), "65534");
    let (_, out, _) = exec(rt, &id, &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(out, sandbox.resolv_conf);
    let (_, out, _) = exec(rt, &id, &["cat", "/etc/hosts"]).await;
    assert_eq!(out, sandbox.etc_hosts);
    let mine = format!("/tmp/{}", unique("kemutest-private-"));
    let script = format!("ls -A /tmp | wc -l; touch {mine} && echo ok");
    let (code, out, _) = exec(rt, &id, &["sh", "-c", &script]).await;
    assert_eq!((code, out.as_str()), (0, "0\nok\n"));
    assert!(
        !std::path::Path::new(&mine).exists(),
        "the container's /tmp is the host's"
    );
    let (code, _, err) = exec(rt, &id, &["touch", "/kemu-probe"]).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "{err}"
    );
    let (_, out, _) = exec(
        rt,
        &id,
        &[
            "sh",
            "-c",
            "echo $$ > /dev/null; ps -e -o pid= 2>/dev/null | wc -l; ls /proc | grep -c '^[0-9]'",
        ],
    )
    .await;
    let counts: Vec<&str> = out.lines().collect();
    assert!(
        counts
            .last()
            .is_some_and(|n| n.trim().parse::<u32>().unwrap() <= 4),
        "{out}"
    );

    // exec exit codes and a missing command.
    let (code, _, _) = exec(rt, &id, &["sh", "-c", "exit 7"]).await;
    assert_eq!(code, 7);
    let (code, _, err) = exec(rt, &id, &["kemu-no-such-command"]).await;
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");

    // The access log reaches the container log.
    let log = logs(rt, &id, LogOptions::default()).await;
    assert!(log.contains("\"GET / HTTP/1.1\" 200 615"), "{log}");

    // Stop: nginx exits 0 on SIGTERM.
    let pid = rt.status(&id).await.unwrap().pid.unwrap();
    rt.stop(&id, Duration::from_secs(10)).await.unwrap();
    match rt.status(&id).await.unwrap().state {
        ContainerState::Exited {
            exit_code, reason, ..
        } => {
            assert_eq!((exit_code, reason.as_str()), (0, "Completed"))
        }
        other => panic!("{other:?}"),
    }
    assert!(!alive(pid));
    rt.remove(&id).await.unwrap();
    assert!(!rt.container_dir(&id).exists());
}

#[tokio::test]
async fn agnhost_netexec_sees_its_clients_and_answers_its_hostname() {
    let ns = Netns::new();
    let client = Netns::new();
    // A veth between the pod and a client namespace, both this test's own.
    let (a, b) = (unique("kta"), unique("ktb"));
    run(&[
        "ip",
        "-n",
        &ns.name,
        "link",
        "add",
        &a,
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "netns",
        &client.name,
    ]);
    run(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        "10.250.0.2/24",
        "dev",
        &a,
    ]);
    run(&["ip", "-n", &ns.name, "link", "set", &a, "up"]);
    run(&[
        "ip",
        "-n",
        &client.name,
        "addr",
        "add",
        "10.250.0.1/24",
        "dev",
        &b,
    ]);
    run(&["ip", "-n", &client.name, "link", "set", &b, "up"]);

    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "netexec-1");
    let mut netexec = container(
        "netexec",
        "registry.k8s.io/e2e-test-images/agnhost:2.53",
        &[],
    );
    netexec.args = vec![
        "netexec".into(),
        "--http-port=8080".into(),
        "--udp-port=8081".into(),
    ];
    let id = rt
        .create_and_start(&sandbox, &netexec)
        .await
        .expect("start netexec");

    let clientip = eventually(|| {
        let out = client.exec(&["curl", "-s", "http://10.250.0.2:8080/clientip"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(clientip.starts_with("10.250.0.1:"), "{clientip}");
    let out = client.exec(&["curl", "-s", "http://10.250.0.2:8080/hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "netexec-1");
    let out = client.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.250.0.2:8080/healthz",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let out = client.exec(&["curl", "-s", "http://10.250.0.2:8080/shell?cmd=id%20-u"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"output\":\"65534\\n\"}"
    );

    // /exit ends the container with the asked code.
    let _ = client.exec(&[
        "curl",
        "-s",
        "-m",
        "2",
        "http://10.250.0.2:8080/exit?code=3",
    ]);
    match wait_exited(rt, &id).await {
        ContainerState::Exited {
            exit_code, reason, ..
        } => {
            assert_eq!((exit_code, reason.as_str()), (3, "Error"))
        }
        other => panic!("{other:?}"),
    }
    let log = logs(rt, &id, LogOptions::default()).await;
    assert!(log.contains("Started HTTP server on port 8080"), "{log}");
}

#[tokio::test]
async fn restarts_keep_previous_logs_and_a_fresh_runtime_adopts_containers() {
    let ns = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "job-1");
    let job = container(
        "job",
        "debian",
        &[
            "sh",
            "-c",
            "echo hello from $HOSTNAME; echo oops >&2; exit 3",
        ],
    );

    let first = rt
        .create_and_start(&sandbox, &job)
        .await
        .expect("start job");
    assert!(matches!(
        wait_exited(rt, &first).await,
        ContainerState::Exited { exit_code: 3, .. }
    ));
    assert_eq!(
        logs(rt, &first, LogOptions::default()).await,
        "hello from job-1\noops\n"
    );
    let stamped = logs(
        rt,
        &first,
        LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert!(
        stamped.ends_with("Z oops\n") && stamped.len() > 31,
        "{stamped}"
    );

    let second = rt
        .create_and_start(&sandbox, &job)
        .await
        .expect("restart job");
    assert_eq!(rt.status(&second).await.unwrap().attempt, 1);
    wait_exited(rt, &second).await;
    let previous = logs(
        rt,
        &second,
        LogOptions {
            previous: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(previous, "hello from job-1\noops\n");
    assert!(
        rt.logs(
            &first,
            LogOptions {
                previous: true,
                ..Default::default()
            }
        )
        .await
        .is_err()
    );

    // A third start prunes the first instance and keeps the second for --previous.
    let third = rt
        .create_and_start(&sandbox, &job)
        .await
        .expect("restart job again");
    wait_exited(rt, &third).await;
    assert!(!rt.container_dir(&first).exists());
    assert!(rt.container_dir(&second).exists());

    // A long runner, adopted by a fresh runtime on the same root, and followed logs.
    let sleeper = container(
        "sleeper",
        "debian",
        &["sh", "-c", "echo started; exec sleep 3600"],
    );
    let id = rt
        .create_and_start(&sandbox, &sleeper)
        .await
        .expect("start sleeper");
    let adopted = ProcessRuntime::new(&root.dir, env!("CARGO_BIN_EXE_kemu"), test_ids()).unwrap();
    let listed = adopted.list().await.unwrap();
    let found = listed
        .iter()
        .find(|c| c.id == id)
        .expect("the fresh runtime lists the sleeper");
    assert!(matches!(found.state, ContainerState::Running { .. }));
    assert_eq!(found.container_name, "sleeper");
    let pid = found.pid.unwrap();
    // `sh` replaces itself with sleep after its echo: wait for that exec, not for a time.
    let mut seen = Vec::new();
    for _ in 0..250 {
        let (code, out, _) = exec(&adopted, &id, &["cat", "/proc/1/cmdline"]).await;
        assert_eq!(code, 0, "{out}");
        if out == "sleep\x003600\0" {
            break;
        }
        seen.push(out);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.len() < 250, "PID 1 never became sleep: {seen:?}");
    assert!(
        seen.iter().all(|c| c.starts_with("sh\0-c\0")),
        "PID 1 was neither sh nor sleep: {seen:?}"
    );

    let follower = {
        let adopted = adopted.clone();
        let id = id.clone();
        tokio::spawn(async move {
            logs(
                &adopted,
                &id,
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
        })
    };
    // sleep as PID 1 ignores SIGTERM: the grace period runs out and SIGKILL ends it.
    adopted.stop(&id, Duration::from_millis(300)).await.unwrap();
    match adopted.status(&id).await.unwrap().state {
        ContainerState::Exited {
            exit_code, signal, ..
        } => assert_eq!((exit_code, signal), (137, Some(9))),
        other => panic!("{other:?}"),
    }
    assert!(!alive(pid));
    let followed = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(followed, "started\n");
}

#[tokio::test]
async fn graceful_stop_and_unknown_images() {
    let ns = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "web-1");
    let trap = container(
        "trap",
        "debian",
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.1; done",
        ],
    );
    let id = rt.create_and_start(&sandbox, &trap).await.unwrap();
    eventually(|| {
        std::fs::read_to_string(rt.container_dir(&id).join("container.log"))
            .ok()
            .filter(|l| l.contains("up"))
    })
    .await;
    rt.stop(&id, Duration::from_secs(20)).await.unwrap();
    assert!(matches!(
        rt.status(&id).await.unwrap().state,
        ContainerState::Exited { exit_code: 0, .. }
    ));
    assert!(
        logs(rt, &id, LogOptions::default())
            .await
            .ends_with("bye\n")
    );
    // Stopping twice is fine.
    rt.stop(&id, Duration::from_secs(1)).await.unwrap();

    // A terminal: resized, and the command sees it.
    let sleeper = rt
        .create_and_start(&sandbox, &container("tty", "debian", &["sleep", "3600"]))
        .await
        .unwrap();
    let mut session = rt
        .exec(
            &sleeper,
            ExecRequest {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 0.5; stty size; tty; exit 4".into(),
                ],
                tty: true,
                stdin: true,
            },
        )
        .await
        .unwrap();
    assert!(session.stderr.is_none());
    (session.resize.as_ref().unwrap())(kemu::runtime::TerminalSize {
        width: 100,
        height: 30,
    })
    .unwrap();
    let mut out = String::new();
    session.stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(session.exit.await.unwrap(), 4);
    assert!(out.starts_with("30 100\r\n/dev/pts/"), "{out:?}");
    rt.remove(&sleeper).await.unwrap();

    let err = rt
        .create_and_start(&sandbox, &container("db", "postgres:16", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kemu::runtime::RuntimeError::ImageNotAvailable { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("registry.k8s.io/e2e-test-images/agnhost")
    );
    let err = rt
        .create_and_start(
            &sandbox,
            &container("bad", "debian", &["kemu-no-such-command"]),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("executable file not found in $PATH"),
        "{err}"
    );
}

/// A pod must not be able to write the host's files, as user 65534 or as root.
#[tokio::test]
async fn containers_cannot_write_the_host() {
    let ns = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "intruder");
    // Another pod's container, whose directory the intruder tries to write.
    let other = rt
        .create_and_start(
            &root.sandbox(&ns, "victim"),
            &container("v", "debian", &["sleep", "3600"]),
        )
        .await
        .unwrap();
    let other_dir = rt.container_dir(&other);
    let state_dir = root.dir.display().to_string();
    let probe = format!("kemutest-probe-{}", std::process::id());
    let targets = [
        format!("/etc/{probe}"),
        format!("/root/{probe}"),
        format!("/run/netns/{probe}"),
        format!("/run/kemu/{probe}"),
        format!("/var/lib/{probe}"),
        format!("{state_dir}/{probe}"),
        format!("{}/{probe}", other_dir.display()),
        format!("{}/container.log", other_dir.display()),
        format!("{}/spec.json", other_dir.display()),
    ];
    // Collect breaches instead of stopping at the first, so the files are cleaned up below.
    let mut breaches = Vec::new();
    for user in [None, Some(0)] {
        let mut intruder = container("intruder", "debian", &["sleep", "3600"]);
        intruder.security = SecurityContext {
            run_as_user: user,
            ..Default::default()
        };
        let id = rt.create_and_start(&sandbox, &intruder).await.unwrap();
        for target in &targets {
            let script = format!("echo x >> '{target}'");
            let (code, _, _) = exec(rt, &id, &["sh", "-c", &script]).await;
            if code == 0 {
                breaches.push(format!("user {user:?} could write {target}"));
            }
        }
        // Root cannot lift the protection: no CAP_SYS_ADMIN, no devices, read-only /proc/sys.
        let attempts: [&str; 6] = [
            "mount -o remount,rw /",
            "mount -t tmpfs none /mnt",
            &format!("unshare -Urm sh -c 'mount -o remount,rw / && touch /etc/{probe}'"),
            "cat /proc/sys/kernel/printk_ratelimit > /proc/sys/kernel/printk_ratelimit",
            "test -e /dev/vda || test -e /dev/sda || test -e /dev/mem",
            "mknod /dev/kemutest b 8 0",
        ];
        for attempt in attempts {
            let (code, out, _) = exec(rt, &id, &["sh", "-c", attempt]).await;
            if code == 0 {
                breaches.push(format!("user {user:?}: `{attempt}` succeeded: {out}"));
            }
        }
        let (_, caps, _) = exec(rt, &id, &["sh", "-c", "grep CapEff /proc/self/status"]).await;
        if user == Some(0) {
            assert!(caps.contains("00000000a80425fb"), "{caps}");
        } else {
            assert!(caps.contains("0000000000000000"), "{caps}");
        }
        rt.remove(&id).await.unwrap();
    }
    for target in &targets {
        if target.ends_with(&probe) && std::path::Path::new(target).exists() {
            let _ = std::fs::remove_file(target);
            breaches.push(format!("{target} was created on the host"));
        }
    }
    assert!(breaches.is_empty(), "{breaches:#?}");
    let log = std::fs::read_to_string(other_dir.join("container.log")).unwrap_or_default();
    assert!(!log.contains('x'), "the other pod's log was written");
}

#[tokio::test]
async fn serve_hostname_and_pause_images() {
    let ns = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let sandbox = root.sandbox(&ns, "hostnames-1");
    let mut serve = container("serve", "registry.k8s.io/e2e-test-images/agnhost:2.53", &[]);
    serve.args = vec!["serve-hostname".into()];
    let id = rt.create_and_start(&sandbox, &serve).await.unwrap();
    let answer = eventually(|| {
        let out = ns.exec(&["curl", "-s", "http://127.0.0.1:9376/"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(answer, "hostnames-1");
    // Like the real one, it keeps serving for 60 s after SIGTERM: the grace period ends it.
    rt.stop(&id, Duration::from_millis(500)).await.unwrap();
    assert!(matches!(
        rt.status(&id).await.unwrap().state,
        ContainerState::Exited { exit_code: 137, .. }
    ));
    let log = logs(rt, &id, LogOptions::default()).await;
    assert!(
        log.contains("Serving on port 9376.") && log.contains("Awaiting pod deletion."),
        "{log}"
    );

    let pause = rt
        .create_and_start(
            &sandbox,
            &container("pause", "registry.k8s.io/pause:3.10", &[]),
        )
        .await
        .unwrap();
    let (code, out, _) = exec(rt, &pause, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!((code, out.as_str()), (0, "kemu\0builtin-image\0pause\0"));
    // As PID 1 it gets SIGTERM only once it takes it (blocked, or waited for in sigwait): a
    // SIGTERM sent before, while a loaded machine still starts the binary, would be dropped.
    let pid = rt.status(&pause).await.unwrap().pid.unwrap();
    eventually(|| {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
        let status = read("status")?;
        let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
        let blocked = u64::from_str_radix(blocked.trim(), 16).ok()?;
        let waiting = read("wchan")?.starts_with("do_sigtimedwait");
        (waiting || blocked & (1 << (libc::SIGTERM - 1)) != 0).then(String::new)
    })
    .await;
    rt.stop(&pause, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(
        rt.status(&pause).await.unwrap().state,
        ContainerState::Exited { exit_code: 0, .. }
    ));
    assert_eq!(
        logs(rt, &pause, LogOptions::default()).await,
        "Shutting down, got signal: Terminated\n"
    );
}

/// The hostile container of issue 12: it asks for everything a spec can ask.
fn hostile_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        privileged: true,
        capabilities_add: vec!["SYS_ADMIN".into(), "SYS_MODULE".into(), "NET_ADMIN".into()],
        ..Default::default()
    }
}

/// A process as the host sees it: its uid_map, gid_map (whitespace-normalised) and the
/// `Uid:` and `Gid:` lines of its status.
fn host_view(pid: u32) -> (String, String, String, String) {
    let words = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap();
    let status = read("status");
    let line = |key: &str| {
        words(
            status
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap()
                .to_string(),
        )
    };
    (
        words(read("uid_map")),
        words(read("gid_map")),
        line("Uid:"),
        line("Gid:"),
    )
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

/// A host process whose command line is exactly `argv`.
fn find_process(argv: &[&str]) -> Option<u32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (std::fs::read(format!("/proc/{pid}/cmdline")).ok()? == wanted).then_some(pid)
    })
}

/// Root, `privileged: true` and SYS_ADMIN, SYS_MODULE and NET_ADMIN hold in the container's
/// own user namespace only: seen from the host its processes (PID 1 and exec'd ones) are an
/// unprivileged uid, and it can neither read a root-only file, write the host, undo its mounts,
/// load a module, see the host's processes nor change a network (tests/fixtures/confinement).
#[tokio::test]
async fn a_privileged_root_container_is_confined_to_its_user_namespace() {
    let ns = Netns::new();
    let node = Netns::new();
    let root = Root::new();
    let rt = &root.runtime;
    let ids = test_ids();
    let mut hostile = container("hostile", "debian", &["sh", "-c", "sleep 3600"]);
    hostile.security = hostile_security();
    let id = rt
        .create_and_start(&root.sandbox(&ns, "hostile"), &hostile)
        .await
        .expect("start the hostile container");
    let pid = rt.status(&id).await.unwrap().pid.unwrap();

    let map = format!("0 {} 65536", ids.start);
    let host_ids = |key: &str| format!("{key} {0} {0} {0} {0}", ids.start);
    let expected = (map.clone(), map.clone(), host_ids("Uid:"), host_ids("Gid:"));
    assert_eq!(host_view(pid), expected, "PID 1 as the host sees it");
    // Inside, it is root with every capability (of its user namespace).
    let (_, out, _) = exec(
        rt,
        &id,
        &["sh", "-c", "id -u; grep CapEff /proc/self/status"],
    )
    .await;
    assert_eq!(out, "0\nCapEff:\t000001ffffffffff\n");
    // An exec'd command is in the same user namespace: its uid_map reads the same inside, and
    // the host sees the same ids.
    let (_, out, _) = exec(rt, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(out.split_whitespace().collect::<Vec<_>>().join(" "), map);
    let marker = unique("kemutesthostile");
    let sleeper_argv = ["sleep", "3599"];
    let _sleeper = rt
        .exec(
            &id,
            ExecRequest {
                command: sleeper_argv.iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
            },
        )
        .await
        .unwrap();
    let sleeper = eventually(|| find_process(&sleeper_argv).map(|p| p.to_string())).await;
    assert_eq!(
        host_view(sleeper.parse().unwrap()),
        expected,
        "an exec'd process as the host sees it"
    );

    // Host files the container sees: one for everybody, one for host root only.
    let dir = root.dir.join("host-files");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.join("secret");
    std::fs::write(dir.join("public"), "anyone\n").unwrap();
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let script = include_str!("fixtures/confinement/hostile.sh");
    let finit_module = libc::SYS_finit_module.to_string();
    let (_, out, err) = exec(
        rt,
        &id,
        &[
            "sh",
            "-c",
            script,
            "hostile",
            &secret.to_string_lossy(),
            &dir.to_string_lossy(),
            &marker,
            &finit_module,
            module_errno(),
            &node.name,
        ],
    )
    .await;
    // What the container created on the host, if anything: removed, and a breach.
    let mut breaches: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("breach") || l.starts_with("control"))
        .map(String::from)
        .collect();
    for d in ["/", "/etc", "/usr", "/var", &*dir.to_string_lossy()] {
        let path = std::path::Path::new(d).join(&marker);
        if path.exists() {
            let _ = std::fs::remove_file(&path);
            breaches.push(format!("{} exists on the host", path.display()));
        }
    }
    for netns in [&ns, &node] {
        let rules = netns.exec(&["iptables-save"]);
        let tables = netns.exec(&["nft", "list", "tables"]);
        for (what, out) in [("iptables", rules), ("nftables", tables)] {
            if String::from_utf8_lossy(&out.stdout).contains(&marker) {
                breaches.push(format!("the {what} of {} changed", netns.name));
            }
        }
    }
    assert!(
        breaches.is_empty() && out.ends_with("done\n"),
        "{breaches:#?}\n{out}\n{err}"
    );
    assert_eq!(host_view(pid).2, host_ids("Uid:"));
    rt.remove(&id).await.unwrap();
}
