//! Topology files: every bad file under tests/fixtures/topologies/bad/ gives an error that
//! names the file, line, column and field (snapshotted), and the shipped topologies resolve
//! to the plans `kemu up --dry-run` prints (snapshotted).

use std::path::Path;

fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings
}

#[test]
fn bad_topologies_name_file_line_column_and_field() {
    settings().bind(|| {
        insta::glob!("fixtures/topologies/bad/*.yaml", |path| {
            let name = format!(
                "tests/fixtures/topologies/bad/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            let source = std::fs::read_to_string(path).unwrap();
            let err =
                kemu::topology::parse(&name, &source).expect_err("a bad topology must not resolve");
            let text = err.to_string();
            assert!(text.starts_with(&name), "error must name the file: {text}");
            for p in &err.problems {
                assert!(!p.field.is_empty(), "every problem names a field: {text}");
            }
            insta::assert_snapshot!(text);
        });
    });
}

fn dry_run(file: &str) -> String {
    let topo = kemu::topology::Topology::load(Path::new(file)).unwrap();
    let plan = kemu::plan::plan(
        &topo,
        Path::new("/run/kemu").join(topo.name.as_str()).as_path(),
        kemu::plan::OverlayBy::Launcher,
    );
    format!("{plan}")
}

#[test]
fn seed_plan() {
    settings().bind(|| insta::assert_snapshot!(dry_run("topologies/seed.yaml")));
}

#[test]
fn two_segments_plan() {
    settings().bind(|| insta::assert_snapshot!(dry_run("topologies/two-segments.yaml")));
}

#[test]
fn seed_resolves_as_the_article_describes() {
    let topo = kemu::topology::Topology::load(Path::new("topologies/seed.yaml")).unwrap();
    assert_eq!(topo.master().ip.to_string(), "192.168.0.201");
    assert!(
        topo.master().is_minion(),
        "192.168.0.201 is role ai: master and minion"
    );
    assert_eq!(topo.minions().count(), 3);
    assert_eq!(topo.kubernetes_service_ip().to_string(), "192.168.3.1");
    assert_eq!(topo.cluster_network.network.to_string(), "172.16.0.0/16");
    assert_eq!(topo.pod_mtu(), 1450);
    let client = topo
        .hosts
        .iter()
        .find(|h| h.is_client())
        .expect("an outside client");
    assert_eq!(client.segment, "lan");
    settings().bind(|| insta::assert_json_snapshot!("seed_topology", topo));
}

#[test]
fn generated_topologies_resolve_and_match_the_shipped_files() {
    for (hosts, file) in [
        (100, "topologies/hosts-100.yaml"),
        (500, "topologies/hosts-500.yaml"),
    ] {
        let text = kemu::topology::generate::generate(&kemu::topology::generate::GenerateOptions {
            name: format!("hosts{hosts}"),
            hosts,
            segments: 1,
            clients: true,
            proxy_mode: "iptables".into(),
        });
        let topo = kemu::topology::parse(file, &text).unwrap();
        assert_eq!(topo.minions().count(), hosts);
        let shipped = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            shipped, text,
            "{file} is out of date: regenerate it with `kemu generate --hosts {hosts} --name hosts{hosts} --clients > {file}`"
        );
    }
}

#[test]
fn runtime_is_chosen_per_lab_and_per_host() {
    let text = "name: rt\nsegments:\n  - name: lan\n    cidr: 192.168.0.0/24\nhosts:\n  - name: m\n    ip: 192.168.0.10\n    roles: [master, minion]\n  - name: a\n    ip: 192.168.0.11\n    roles: [minion]\n    runtime: process\nservices:\n  clusterIPRange: 10.96.0.0/24\nclusterNetwork:\n  network: 172.16.0.0/16\nruntime: docker\n";
    let topo = kemu::topology::parse("rt.yaml", text).unwrap();
    use kemu::topology::RuntimeKind;
    assert_eq!(topo.runtime, RuntimeKind::Docker);
    let runtime = |name: &str| topo.hosts.iter().find(|h| h.name == name).unwrap().runtime;
    assert_eq!(runtime("m"), RuntimeKind::Docker, "the lab's runtime");
    assert_eq!(runtime("a"), RuntimeKind::Process, "the host's override");
    let plain = kemu::topology::parse("p.yaml", &text.replace("runtime: docker\n", "")).unwrap();
    assert!(
        plain
            .hosts
            .iter()
            .all(|h| h.runtime == RuntimeKind::Process)
    );
}
