//! Tier 1: the kernel accepts what we render. Each fixture's rules are applied with
//! `iptables-restore --noflush --counters` / `nft -f -` inside a fresh network namespace
//! (`unshare -n`, one per apply), so the host's own rules are never touched. Needs root, as CI
//! has; without it the test fails rather than skipping.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use kemu::cli::proxy::{DEFAULT_SEED, RenderArgs, render_file};
use kemu::proxy::{ProxyMode, RESTORE_ARGS};

fn apply_in_private_netns(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new("unshare")
        .arg("-n")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run unshare -n {program}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rendered_rules_apply_in_a_private_namespace() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proxy");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "fixtures missing in {}", dir.display());
    let mut failures = Vec::new();
    for file in cases {
        for mode in [
            ProxyMode::Userspace,
            ProxyMode::Iptables,
            ProxyMode::Nftables,
        ] {
            let args = RenderArgs {
                mode,
                node_name: "node-1".into(),
                node_ips: vec!["192.168.0.201".parse().unwrap()],
                cluster_cidr: Some("172.16.0.0/16".parse().unwrap()),
                service_cidrs: vec!["192.168.3.0/24".parse().unwrap()],
                masquerade_all: false,
                file: file.clone(),
                seed: DEFAULT_SEED,
                previous: None,
                kube_proxy_version: None,
            };
            let (text, _) = render_file(&args).unwrap();
            let result = match mode {
                ProxyMode::Nftables => apply_in_private_netns("nft", &["-f", "-"], &text),
                _ => apply_in_private_netns("iptables-restore", RESTORE_ARGS, &text),
            };
            if let Err(err) = result {
                failures.push(format!("{} {mode:?}: {err}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rejected by the kernel:\n{}",
        failures.join("\n")
    );
}

/// Runs `script` with `sh -c` in a fresh network namespace and returns its standard output.
fn in_private_netns(script: &str) -> String {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-ec", script])
        .output()
        .expect("run unshare -n");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `n` ClusterIP services (every fifth a NodePort) with one endpoint each; `port(i)` is
/// service i's port, `None` leaves it out.
fn services_yaml(n: usize, port: impl Fn(usize) -> Option<u16>) -> String {
    let mut out = String::new();
    for i in 0..n {
        let Some(p) = port(i) else { continue };
        let node_port = if i % 5 == 0 {
            format!(", nodePort: {}", 30000 + i)
        } else {
            String::new()
        };
        let kind = if i % 5 == 0 { "NodePort" } else { "ClusterIP" };
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec:\n  type: {kind}\n  clusterIP: 192.168.3.{}\n  ports: [{{name: http, port: {p}, targetPort: 80, protocol: TCP{node_port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-x, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nendpoints:\n- addresses: [172.16.{}.2]\n  conditions: {{ready: true}}\n  nodeName: node-{}\nports: [{{port: 80, protocol: TCP, name: http}}]\n---\n",
            i + 1,
            i % 3 + 1,
            i % 3 + 1,
        ));
    }
    out
}

/// A partial sync (chains rewritten, or edited rule by rule with `-R`/`-D`/`-I`) leaves the
/// kernel exactly as a full restore of the new rule set does.
#[test]
fn partial_restores_leave_the_kernel_as_a_full_restore_does() {
    use kemu::proxy::agent::rules;
    use kemu::proxy::userspace::ProxyPortAllocator;
    use kemu::proxy::{NodeContext, ProxyInput, objects};
    let dir = tempfile::tempdir().unwrap();
    // As the agent renders: userspace with the seeded proxy ports, iptables knowing which
    // nat chains the kernel has (so that the chains of a removed service are deleted).
    let render = |mode: ProxyMode, yaml: String, existing: &str| {
        let objs = objects::parse_yaml(&yaml).unwrap();
        let mut node = NodeContext::new("node-1", vec!["192.168.0.201".parse().unwrap()]);
        node.cluster_cidr = Some("172.16.0.0/16".parse().unwrap());
        let mut input = ProxyInput::from_objects(node, &objs.services, &objs.endpoint_slices);
        if mode == ProxyMode::Userspace {
            input.proxy_ports = ProxyPortAllocator::new(DEFAULT_SEED)
                .allocate_all(input.services.iter().map(|s| &s.name));
        }
        input.existing_nat_chains = rules::chains_after_restore(existing, "nat");
        kemu::proxy::render(mode, &input)
    };
    fn base(i: usize) -> Option<u16> {
        Some(80 + (i % 2) as u16)
    }
    type Ports = fn(usize) -> Option<u16>;
    let changes: [(&str, Ports); 3] = [
        ("one port", |i| if i == 17 { Some(8080) } else { base(i) }),
        ("scattered ports", |i| {
            if i % 13 == 4 { Some(9000) } else { base(i) }
        }),
        ("one gone, one new", |i| if i == 5 { None } else { base(i) }),
    ];
    let mut edited = 0;
    for mode in [ProxyMode::Userspace, ProxyMode::Iptables] {
        let before = render(mode, services_yaml(60, base), "");
        for (what, port) in &changes {
            let n = if *what == "one gone, one new" { 61 } else { 60 };
            let after = render(mode, services_yaml(n, port), &before);
            let patch = rules::partial_restore(&before, &after);
            edited += patch.lines().filter(|l| l.starts_with("-R ")).count();
            let (b, a, p) = (
                dir.path().join("before.rules"),
                dir.path().join("after.rules"),
                dir.path().join("patch.rules"),
            );
            std::fs::write(&b, &before).unwrap();
            std::fs::write(&a, &after).unwrap();
            std::fs::write(&p, &patch).unwrap();
            let restore = |f: &Path| format!("iptables-restore --noflush < {}", f.display());
            let patched =
                in_private_netns(&format!("{}; {}; iptables-save", restore(&b), restore(&p)));
            let full = in_private_netns(&format!("{}; iptables-save", restore(&a)));
            assert_eq!(
                kemu::proxy::normalize::iptables_save(&patched),
                kemu::proxy::normalize::iptables_save(&full),
                "{mode:?}, {what}: the patch\n{patch}"
            );
        }
    }
    assert!(edited >= 4, "no chain was edited in place");
}
