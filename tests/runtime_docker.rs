//! The Docker runtime end to end: the seed walkthrough (topologies/seed.yaml with
//! `runtime: docker`, the article's nginx RC and its services) on the local Docker engine,
//! then logs, exec, restarts, adoption after a kubelet restart, and clean-up on `down`.
//!
//! Nothing is pulled: the test imports its own image (`docker import` of a root filesystem
//! with the static busybox from Debian's busybox-static, its httpd serving the nginx welcome
//! page). Its name is not one of kemu's built-in images, so the pods can only run it from the
//! engine. Needs root and a running dockerd (ci/bootstrap.sh starts one); without them it
//! fails, it never skips.

mod common;
mod docker_support;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Lab, RootState, run_kemu, temp_file, wait_for};

use docker_support::{WELCOME, import_image};

const IMAGE: &str = "kemu-e2e/web:1";
const CLIENT: &str = "client";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI (ci/bootstrap.sh installs docker.io)")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids of the lab's containers in the engine (`-a`: exited ones too).
fn lab_containers(lab: &str, extra: &[&str]) -> Vec<String> {
    let filter = format!("label=io.kemu.lab={lab}");
    let mut args = vec!["ps", "-aq", "--no-trunc", "--filter", &filter];
    args.extend_from_slice(extra);
    docker_ok(&args).lines().map(String::from).collect()
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/examples/seed/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn curl(lab: &Lab, host: &str, url: &str) -> Option<String> {
    let out = lab.exec(host, &["curl", "-s", "-m", "2", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nginx_pods(lab: &Lab) -> Vec<String> {
    lab.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "name=nginx",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])
    .lines()
    .map(String::from)
    .collect()
}

fn container_id(lab: &Lab, pod: &str) -> String {
    lab.jsonpath(
        &format!("pod/{pod}"),
        "{.status.containerStatuses[0].containerID}",
    )
}

#[test]
fn seed_walkthrough_on_the_docker_engine() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    import_image(IMAGE);
    let before = RootState::capture();
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/seed.yaml"))
            .unwrap();
    let (_dir, topology) = temp_file("seed-docker.yaml", &format!("{seed}runtime: docker\n"));
    let lab = Lab::up(topology.to_str().unwrap(), "dk", &[]);
    let name = lab.name.clone();

    // A container that is not kemu's, named like one of the lab's: `down` must leave it.
    let foreign = format!("kemu_{name}_foreign");
    docker_ok(&["create", "--name", &foreign, IMAGE]);

    // The article: the RC (on the test image) and its two services.
    lab.apply(&manifest("nginx-rc.yaml").replace("image: nginx", &format!("image: {IMAGE}")));
    lab.apply(&manifest("nginx-service-clusterip.yaml"));
    lab.apply(&manifest("nginx-service-nodeport.yaml"));
    wait_for("two nginx pods Running", Duration::from_secs(90), || {
        let out = lab.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "name=nginx",
            "-o",
            "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
        ]);
        (out.lines().filter(|l| *l == "Running").count() == 2).then_some(())
    });
    let pods = nginx_pods(&lab);
    for pod in &pods {
        let id = container_id(&lab, pod);
        assert!(id.starts_with("docker://"), "{pod}: containerID {id}");
        let image = docker_ok(&[
            "inspect",
            "-f",
            "{{.Config.Image}} {{.HostConfig.NetworkMode}}",
            id.trim_start_matches("docker://"),
        ]);
        assert!(
            image.starts_with(IMAGE) && image.contains(" container:"),
            "{pod} runs {image}"
        );
    }
    // Two app containers, two sandboxes.
    assert_eq!(lab_containers(&name, &[]).len(), 4);

    // From the outside client, over the NodePort, as the article does.
    let node_port = lab.jsonpath("svc/nginx-service-nodeport", "{.spec.ports[0].nodePort}");
    let page = wait_for("the NodePort answers", Duration::from_secs(30), || {
        curl(&lab, CLIENT, &format!("http://192.168.0.201:{node_port}/"))
    });
    assert!(page.contains(WELCOME), "{page}");
    // And the ClusterIP from a minion.
    let cluster_ip = lab.jsonpath("svc/nginx-service-clusterip", "{.spec.clusterIP}");
    let page = wait_for("the ClusterIP answers", Duration::from_secs(30), || {
        curl(&lab, "192.168.0.202", &format!("http://{cluster_ip}:8001/"))
    });
    assert!(page.contains(WELCOME), "{page}");

    // exec: the container sits in the pod's network namespace (its IP), with its hostname.
    let pod = &pods[0];
    let pod_ip = lab.jsonpath(&format!("pod/{pod}"), "{.status.podIP}");
    let out = lab.kubectl_ok(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "hostname; ip -4 addr show eth0",
    ]);
    assert!(out.starts_with(&format!("{pod}\n")), "{out}");
    assert!(out.contains(&format!("inet {pod_ip}/")), "{out}");
    let failed = lab.kubectl(&["exec", pod, "--", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7), "exec's exit code");

    // logs: httpd -v logs each request (the curls above).
    let logs = lab.kubectl_ok(&["logs", "-l", "name=nginx", "--prefix"]);
    assert!(logs.contains("response:200"), "{logs}");

    // Restarts: a container that exits 3 is started again; each instance counts itself in an
    // emptyDir (which outlives the containers), so --previous must show the one before.
    lab.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  volumes:
    - name: data
      emptyDir: {{}}
  containers:
    - name: c
      image: {IMAGE}
      command: ["sh", "-c", "echo x >> /data/runs; echo attempt $(wc -l < /data/runs); exit 3"]
      volumeMounts:
        - name: data
          mountPath: /data
"#
    ));
    wait_for("crasher restarted", Duration::from_secs(90), || {
        let n = lab.jsonpath("pod/crasher", "{.status.containerStatuses[0].restartCount}");
        (n.parse::<u32>().unwrap_or(0) >= 1).then_some(())
    });
    let last = lab.jsonpath(
        "pod/crasher",
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(last, "3");
    let attempt = |log: &str| {
        log.trim()
            .strip_prefix("attempt ")
            .and_then(|n| n.trim().parse::<u32>().ok())
    };
    // A restart may come between the two reads: read them again until they agree.
    wait_for(
        "logs --previous shows the instance before",
        Duration::from_secs(30),
        || {
            let current = attempt(&lab.kubectl_ok(&["logs", "crasher"]))?;
            let previous = attempt(&lab.kubectl_ok(&["logs", "crasher", "--previous"]))?;
            (previous + 1 == current).then_some(())
        },
    );

    // Adoption: a restarted kubelet keeps the containers it started.
    let node = lab.jsonpath(&format!("pod/{pod}"), "{.spec.nodeName}");
    let id_before = container_id(&lab, pod);
    run_kemu(&["agent", "restart", &name, &node, "kubelet"]);
    std::thread::sleep(Duration::from_secs(3));
    wait_for(
        "the pod Running after the restart",
        Duration::from_secs(30),
        || (lab.jsonpath(&format!("pod/{pod}"), "{.status.phase}") == "Running").then_some(()),
    );
    assert_eq!(
        container_id(&lab, pod),
        id_before,
        "the container was adopted"
    );
    let out = lab.kubectl_ok(&["exec", pod, "--", "cat", "/etc/hostname"]);
    assert_eq!(out.trim(), pod.as_str());
    let page = wait_for(
        "the pod answers after the restart",
        Duration::from_secs(30),
        || curl(&lab, &node, &format!("http://{pod_ip}/")),
    );
    assert!(page.contains(WELCOME));

    // A deleted pod takes its containers and its sandbox with it.
    lab.kubectl_ok(&["delete", "pod", "crasher", "--wait=true"]);
    let crasher_left = wait_for(
        "the crasher's containers removed",
        Duration::from_secs(30),
        || {
            let left = lab_containers(&name, &["--filter", "label=io.kemu.pod.name=crasher"]);
            left.is_empty().then_some(left)
        },
    );
    assert!(crasher_left.is_empty());

    drop(lab);
    assert!(
        lab_containers(&name, &[]).is_empty(),
        "kemu down left containers of the lab in the engine"
    );
    let foreign_left = docker_ok(&["ps", "-aq", "--filter", &format!("name=^{foreign}$")]);
    assert!(
        !foreign_left.trim().is_empty(),
        "kemu down removed a container that is not kemu's"
    );
    docker_ok(&["rm", "-f", &foreign]);
    assert_eq!(RootState::capture(), before, "the root namespace changed");
}

#[test]
fn up_says_how_to_start_an_unreachable_engine() {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/seed.yaml"))
            .unwrap();
    let (_dir, topology) = temp_file("seed-docker.yaml", &format!("{seed}runtime: docker\n"));
    let name = common::unique_name("dkno");
    let out = common::kemu()
        .args([
            "up",
            topology.to_str().unwrap(),
            "--name",
            &name,
            "--no-kubeconfig",
        ])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up succeeded without an engine");
    assert!(
        stderr.contains("the Docker engine is not reachable at unix:///nonexistent/docker.sock")
            && stderr.contains("dockerd"),
        "{stderr}"
    );
    common::assert_lab_gone(&name);
}
