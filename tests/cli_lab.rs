//! The launcher's commands on a running lab: `list`, `status -o json` (everything the table
//! shows, the live proxy mode), `logs` (selection, `-f`), `kubeconfig` (print, `--write` and
//! the context `down` gives back), `reach -o json --expect`. Needs root.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use common::{Lab, kemu, run_kemu};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    serde_json::from_slice(&run_kemu(args).stdout).unwrap()
}

fn text(args: &[&str]) -> String {
    String::from_utf8(run_kemu(args).stdout).unwrap()
}

#[test]
fn list_status_logs_kubeconfig_and_reach_of_a_running_lab() {
    let lab = Lab::up("topologies/seed.yaml", "cli", &[]);
    let name = lab.name.as_str();

    // Progress on stderr, plain (it is not a terminal here): phases and counts, no colour.
    let progress = lab.stderr_of_up();
    for line in [
        "building the network: 6 namespaces",
        "starting the agents",
        "  agents started ",
        "waiting for the API server",
        "  nodes Ready 3/3",
    ] {
        assert!(progress.contains(line), "{line:?} not in:\n{progress}");
    }
    assert!(
        !progress.contains('\x1b') && !progress.contains('\r'),
        "{progress:?}"
    );

    // list: the lab, its hosts, state and API address, as the status shows them.
    let status = json(&["status", name, "-o", "json"]);
    let local = status["api"]["local"].as_str().unwrap().to_string();
    assert!(local.starts_with("https://127.0.0.1:"), "{status}");
    let labs = json(&["list", "-o", "json"]);
    let ours = labs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {labs}"));
    assert_eq!(ours["hosts"], 4);
    assert_eq!(ours["state"], "running");
    assert_eq!(ours["api"], local.as_str());
    let table = text(&["list"]);
    let row = table.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(row.contains("running") && row.contains(&local), "{table}");

    // status: the JSON carries every cell of the table.
    let table = text(&["status", name]);
    for h in status["hosts"].as_array().unwrap() {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{} ", h["name"].as_str().unwrap())))
            .unwrap();
        for key in ["roleLabel", "ip", "segment", "namespace"] {
            assert!(
                row.contains(h[key].as_str().unwrap()),
                "{key} of {h} in {row}"
            );
        }
        let proxy = h["proxy"]["shown"].as_str().unwrap_or("-");
        assert!(row.contains(proxy), "{proxy} in {row}");
    }
    assert!(table.contains(&local));
    for a in status["agents"].as_array().unwrap() {
        assert!(
            table
                .lines()
                .any(|l| l.contains(a["name"].as_str().unwrap())
                    && l.contains(&a["pid"].to_string())
                    && l.contains(a["shownState"].as_str().unwrap())),
            "{a} not in the table"
        );
    }

    // The live proxy mode: after `kemu proxy mode`, the new one, not the topology's.
    let proxy_of = |status: &Value, host: &str| -> Value {
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == host)
            .unwrap()["proxy"]
            .clone()
    };
    assert_eq!(proxy_of(&status, "192.168.0.202")["shown"], "userspace");
    run_kemu(&["proxy", "mode", name, "iptables"]);
    let after = json(&["status", name, "-o", "json"]);
    let proxy = proxy_of(&after, "192.168.0.202");
    assert_eq!(proxy["configured"], "userspace");
    assert_eq!(proxy["applied"], "iptables", "{proxy}");
    assert_eq!(proxy["shown"], "iptables");
    let table = text(&["status", name]);
    let row = table
        .lines()
        .find(|l| l.starts_with("192.168.0.202 "))
        .unwrap();
    assert!(
        row.contains("iptables") && !row.contains("userspace"),
        "{row}"
    );

    // logs: every file prefixed when several; one host; an unknown agent or host is exit 2.
    let all = text(&["logs", name]);
    assert!(
        all.lines().all(|l| l.contains(" | ")),
        "unprefixed lines:\n{all}"
    );
    let agents = kemu()
        .args(["logs", name, "192.168.0.202", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(agents.status.code(), Some(2));
    let said = String::from_utf8_lossy(&agents.stderr);
    assert!(
        said.contains("kubelet") && said.contains("flanneld"),
        "{said}"
    );
    let host = kemu().args(["logs", name, "nosuch"]).output().unwrap();
    assert_eq!(host.status.code(), Some(2));

    // logs -f prints what an agent appends, then ends when the lab goes down (below).
    let mut follow = kemu()
        .args(["logs", name, "192.168.0.202", "kubelet", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = format!("/run/kemu/{name}/logs/192.168.0.202/kubelet.log");
    let marker = format!("marker line of {name}");
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, format!("{marker}\n").as_bytes()).unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap() == marker),
        "logs -f did not print the appended line"
    );

    // kubeconfig: the lab's own, and --write into the invoking user's, given back on down.
    let printed = text(&["kubeconfig", name]);
    assert!(printed.contains(&format!("server: {local}")), "{printed}");
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n- name: mine\n  context: {cluster: x, user: x}\ncurrent-context: mine\n",
    )
    .unwrap();
    std::os::unix::fs::chown(&config, Some(4242), Some(4242)).unwrap();
    let out = kemu()
        .args(["kubeconfig", name, "--write"])
        .env("KUBECONFIG", &config)
        .env("SUDO_UID", "4242")
        .env("SUDO_GID", "4242")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read =
        || -> Value { serde_saphyr::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap() };
    assert_eq!(read()["current-context"], format!("kemu-{name}"));
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (4242, 0o600));
    let nodes = std::process::Command::new("kubectl")
        .args(["--kubeconfig", config.to_str().unwrap(), "get", "nodes"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains("192.168.0.203"),
        "{}",
        String::from_utf8_lossy(&nodes.stderr)
    );

    // reach -o json: the cells, the count, and the --expect comparison.
    let expect = home.path().join("none.expect");
    std::fs::write(&expect, "* * unreached\n").unwrap();
    let out = kemu()
        .args([
            "reach",
            name,
            "-o",
            "json",
            "--expect",
            expect.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let matrix: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reached = matrix["reached"].as_u64().unwrap();
    assert!(reached > 0, "{matrix}");
    assert_eq!(
        matrix["cells"].as_array().unwrap().len() as u64,
        matrix["total"].as_u64().unwrap()
    );
    assert_eq!(matrix["expectation"]["asExpected"], false);
    assert_eq!(
        matrix["expectation"]["differences"]
            .as_array()
            .unwrap()
            .len() as u64,
        reached,
        "every reached cell differs from `* * unreached`"
    );

    let down = run_kemu(&["down", name]);
    let progress = String::from_utf8_lossy(&down.stderr);
    for line in ["stopping the lab's processes", "removing the namespaces"] {
        assert!(progress.contains(line), "{line:?} not in:\n{progress}");
    }
    // The host namespaces and the pods' (reach's probe pods), all of them.
    assert!(
        progress.lines().any(|l| l
            .strip_prefix("  namespaces removed ")
            .and_then(|c| c.split_once('/'))
            .is_some_and(|(done, total)| done == total && done.parse::<usize>().unwrap() >= 6)),
        "{progress}"
    );
    assert!(!progress.contains('\x1b'), "{progress:?}");
    let config = read();
    assert_eq!(config["current-context"], "mine", "{config}");
    assert!(
        !config.to_string().contains(&format!("kemu-{name}")),
        "{config}"
    );
    let status = follow.wait().unwrap();
    assert!(status.success(), "logs -f ended with {status}");
}
