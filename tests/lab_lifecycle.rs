//! Nothing of a lab survives `down`, however `up` ended, and a lab outlives its supervisor.
//!
//! - `up` SIGKILLed at random points of a full start (agents, pods' runtime), then `down`: no
//!   process, namespace, mount, cgroup or state file of the lab remains.
//! - An `up` that fails while the supervisor starts agents rolls back completely.
//! - A supervisor killed with SIGKILL is replaced by `kemu up` of the same lab (`kemu repair`):
//!   the new one adopts the running agents (same PIDs, pods untouched), serves the API endpoint
//!   on the same port again, and restarts an adopted agent that exits.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::{Lab, assert_lab_gone, kemu, unique_name, wait_for};

fn kemu_status(args: &[&str]) -> (Option<i32>, String) {
    let out = kemu().args(args).output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sigkill_of_a_full_up_at_random_points_then_down_leaves_nothing() {
    // A fixed seed by default, so a failure can be replayed; KEMU_TEST_SEED picks another.
    let seed: u64 = std::env::var("KEMU_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2015);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..50 {
        let name = unique_name("kill");
        let delay = Duration::from_millis(rng.random_range(0..=500));
        let mut up = kemu()
            .args([
                "up",
                "topologies/seed.yaml",
                "--name",
                &name,
                "--no-kubeconfig",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = up.kill();
        let _ = up.wait();
        let (code, out) = kemu_status(&["down", &name]);
        assert_eq!(
            code,
            Some(0),
            "round {round} (seed {seed}, killed after {delay:?}): down failed: {out}"
        );
        assert_lab_gone(&name);
    }
}

#[test]
fn an_up_that_fails_while_starting_agents_leaves_nothing() {
    let seed = std::fs::read_to_string("topologies/seed.yaml").unwrap();
    // The last agent the supervisor starts is a daemon that cannot start.
    let broken = seed.replacen(
        "roles: [client]",
        "roles: [client]\n    daemons:\n      - name: broken\n        command: [/nonexistent/kemu-test-daemon]",
        1,
    );
    assert_ne!(
        broken, seed,
        "the seed topology has no client host to break"
    );
    let (_dir, file) = common::temp_file("broken.yaml", &broken);
    let name = unique_name("fail");
    let (code, out) = kemu_status(&[
        "up",
        file.to_str().unwrap(),
        "--name",
        &name,
        "--no-kubeconfig",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("kemu-test-daemon") && out.contains("everything it made was removed"),
        "{out}"
    );
    assert_lab_gone(&name);
}

/// PIDs of the lab's agents as the supervisor publishes them.
fn agent_pids(lab: &str) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(format!("/run/kemu/{lab}/agents.json")).unwrap();
    let agents: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out: Vec<(String, i64)> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["host"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                a["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

fn supervisor_pid(lab: &str) -> i32 {
    let text = std::fs::read_to_string(format!("/run/kemu/{lab}/supervisor.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32
}

#[test]
fn a_dead_supervisor_is_replaced_and_the_new_one_adopts_the_running_agents() {
    let lab = Lab::up("topologies/seed.yaml", "rep", &[]);
    lab.kubectl_ok(&["run", "web", "--image=nginx"]);
    lab.kubectl_ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"]);
    let pod_uid = lab.jsonpath("pod/web", "{.metadata.uid}");
    let before = agent_pids(&lab.name);
    let port = std::fs::read_to_string(format!("/run/kemu/{}/api-port", lab.name)).unwrap();

    // The supervisor dies: the endpoint is gone, status says so and says what to do.
    let dead = supervisor_pid(&lab.name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dead),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the supervisor to die", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{dead}")).exists()
            || std::fs::read_to_string(format!("/proc/{dead}/stat"))
                .is_ok_and(|s| s.contains(") Z")))
        .then_some(())
    });
    assert!(!lab.kubectl(&["get", "nodes"]).status.success());
    let (_, status) = kemu_status(&["status", &lab.name]);
    assert!(
        status.contains("NOT RUNNING") && status.contains(&format!("kemu repair {}", lab.name)),
        "{status}"
    );

    // `kemu up` of the same lab brings it back.
    let (code, out) = kemu_status(&[
        "up",
        "topologies/seed.yaml",
        "--name",
        &lab.name,
        "--no-kubeconfig",
    ]);
    assert_eq!(code, Some(0), "{out}");
    // 3 on the master, 4 on each of the 3 minions (kubelet, flanneld, proxy, netpol).
    assert!(out.contains("15 of 15 agents adopted"), "{out}");
    assert_eq!(
        std::fs::read_to_string(format!("/run/kemu/{}/api-port", lab.name)).unwrap(),
        port,
        "the endpoint moved to another port"
    );
    assert_eq!(agent_pids(&lab.name), before, "agents were started again");
    assert_eq!(lab.jsonpath("pod/web", "{.metadata.uid}"), pod_uid);
    assert_eq!(
        lab.jsonpath("pod/web", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let (_, status) = kemu_status(&["status", &lab.name]);
    assert!(
        status.contains("restarted by kemu repair 1 time") && status.contains("adopted"),
        "{status}"
    );
    // A second repair finds nothing to do.
    let (code, out) = kemu_status(&["repair", &lab.name]);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing to repair"), "{out}");

    // An adopted agent that exits is restarted by the new supervisor.
    let (id, pid) = before
        .iter()
        .find(|(id, _)| id.ends_with("192.168.0.202/proxy"))
        .unwrap()
        .clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let started = Instant::now();
    wait_for(
        "the adopted proxy to be restarted",
        Duration::from_secs(30),
        || {
            agent_pids(&lab.name)
                .into_iter()
                .find(|(i, p)| *i == id && *p != pid && *p != 0)
        },
    );
    let _ = started;
    let (_, status) = kemu_status(&["status", &lab.name]);
    assert!(status.contains("exit status unknown"), "{status}");
    // `down` (the Lab's drop) stops adopted agents too and leaves nothing.
    drop(lab);
}

/// Processes started by `kemu exec` are the host's: `down` stops them with the lab.
#[test]
fn down_stops_what_kemu_exec_left_running() {
    let lab = Lab::up("topologies/seed.yaml", "exe", &[]);
    let mut sleeper = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["exec", &lab.name, "192.168.0.202", "--", "sleep", "3600"])
        .spawn()
        .unwrap();
    wait_for("the command to start", Duration::from_secs(10), || {
        let cg = kemu::lab::cgroup::LabCgroup::of(&lab.name.parse().unwrap())?;
        std::fs::read_to_string(cg.host("192.168.0.202").join("cgroup.procs"))
            .ok()?
            .lines()
            .any(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\0"))
            })
            .then_some(())
    });
    let name = lab.name.clone();
    drop(lab);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the command was not stopped by down");
    assert_lab_gone(&name);
}
