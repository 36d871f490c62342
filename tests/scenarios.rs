//! `kemu run`: every scenario shipped in examples/scenarios/ meets its expectations (one after
//! another, each in its own lab), and a scenario with an unmet expectation exits 1 with an
//! artifacts folder and leaves no lab behind. Needs root.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{assert_lab_gone, kemu, unique_name};

fn run(args: &[&str]) -> Output {
    kemu().arg("run").args(args).output().expect("run kemu run")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_example_scenario_meets_its_expectations() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("examples/scenarios")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    // One after another: the scenarios time faults against node grace periods, and labs
    // running side by side would only add noise.
    let results: Vec<(PathBuf, String, Output)> = files
        .iter()
        .map(|f| {
            let name = unique_name("scn");
            let out = run(&[f.to_str().unwrap(), "--name", &name]);
            (f.clone(), name, out)
        })
        .collect();
    for (file, name, out) in &results {
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            file.display(),
            text(out)
        );
        assert!(
            text(out).contains("met their expectations"),
            "{}",
            text(out)
        );
        assert_lab_gone(name);
    }
}

#[test]
fn an_unmet_expectation_exits_1_with_artifacts_and_no_lab() {
    let artifacts = tempfile::tempdir().unwrap();
    let name = unique_name("unmet");
    let out = run(&[
        "tests/fixtures/scenarios/unmet.yaml",
        "--name",
        &name,
        "--artifacts",
        artifacts.path().to_str().unwrap(),
    ]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("[2/4] exec on 192.168.0.202: sh -c ip -br addr: ok"),
        "{report}"
    );
    assert!(
        report.contains("step 3 (exec on client: sh -c echo there; exit 3): exit status 3 (expected 0); output:\nthere"),
        "{report}"
    );
    for file in [
        "objects.yaml",
        "events.txt",
        "rules.txt",
        "status.txt",
        "conntrack-192.168.0.202.txt",
    ] {
        let path = artifacts.path().join(file);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 0),
            "{} is missing or empty",
            path.display()
        );
    }
    assert!(
        std::fs::read_to_string(artifacts.path().join("rules.txt"))
            .unwrap()
            .contains("KUBE")
    );
    assert!(artifacts.path().join("logs").read_dir().unwrap().count() > 3);
    assert_lab_gone(&name);

    // A bad file is named with its line, and nothing is started.
    let bad = run(&["tests/fixtures/topologies/ok/kubelet.yaml"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("tests/fixtures/topologies/ok/kubelet.yaml:"),
        "{}",
        text(&bad)
    );
}
