//! The exit-code convention (README, "Exit codes"), command by command: 0 done, 1 failed or
//! an expectation not met, 2 a usage or configuration error, 3 the lab is not up. These runs
//! need no lab: they use an empty state root of their own (`KEMU_STATE_DIR`), so labs other
//! tests run at the same time are not seen.

use std::process::Command;

fn kemu_in(state: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(args)
        .env("KEMU_STATE_DIR", state)
        .output()
        .expect("run kemu");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exited"), said)
}

#[test]
fn every_command_follows_the_convention() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("missing.expect");
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], i32)] = &[
        // 0: done (nothing to list; `down` of a lab that is not up has nothing to do).
        (&["list"], 0),
        (&["list", "-o", "json"], 0),
        (&["status"], 0),
        (&["down", "nosuch"], 0),
        (&["generate", "--hosts", "3", "--segments", "3"], 0),
        (&["graph", "topologies/seed.yaml", "--format", "svg"], 0),
        // 2: usage and configuration errors.
        (&["list", "--bogus"], 2),
        (&["status", "../etc"], 2),
        (&["status", "nosuch", "-o", "yaml"], 2),
        (&["logs", "Bad_Name"], 2),
        (&["generate", "--hosts", "2", "--segments", "3"], 2),
        (&["generate", "--hosts", "0"], 2),
        (&["generate", "--hosts", "2", "--proxy-mode", "ipvs"], 2),
        (&["up", "tests/fixtures/topologies/does-not-exist.yaml"], 2),
        (
            &[
                "up",
                "tests/fixtures/topologies/bad/03-bad-ip.yaml",
                "--dry-run",
            ],
            2,
        ),
        (
            &[
                "up",
                "tests/fixtures/topologies/bad/04-duplicate-host-name.yaml",
            ],
            2,
        ),
        (&["reach", "nosuch", "--expect", missing], 2),
        (&["completions", "nosh"], 2),
        (&["exec", "nosuch", "pod/", "--", "true"], 2),
        (&["conntrack", "nosuch", "h", "--service", "a/b/c"], 2),
        (&["capture", "nosuch", "h", "-w", "-", "--proto", "sctp"], 2),
        (&["capture", "nosuch", "h:", "-w", "-"], 2),
        (&["trace", "nosuch", "--from", "h", "--to", "nowhere"], 2),
        (
            &[
                "trace",
                "nosuch",
                "--from",
                "h:eth0",
                "--to",
                "192.168.3.1:443",
            ],
            2,
        ),
        (&["reach", "nosuch", "--watch", "--expect", missing], 2),
        (
            &["graph", "tests/fixtures/topologies/bad/03-bad-ip.yaml"],
            2,
        ),
        (
            &["graph", "tests/fixtures/topologies/does-not-exist.yaml"],
            2,
        ),
        (&["graph", "Bad_Name"], 2),
        (&["graph", "topologies/seed.yaml", "--format", "png"], 2),
        // 3: the lab is not up.
        (&["status", "nosuch"], 3),
        (&["logs", "nosuch"], 3),
        (&["kubeconfig", "nosuch"], 3),
        (&["exec", "nosuch", "h", "--", "true"], 3),
        (&["reach", "nosuch"], 3),
        (&["conntrack", "nosuch", "h"], 3),
        (&["events", "nosuch"], 3),
        (
            &["trace", "nosuch", "--from", "h", "--to", "192.168.3.1:443"],
            3,
        ),
        (&["capture", "nosuch", "h", "-w", "-"], 3),
        (&["snapshot", "nosuch"], 3),
        (&["repair", "nosuch"], 3),
        (&["proxy", "mode", "nosuch", "iptables"], 3),
        (&["down"], 3),
        (&["graph", "nosuch"], 3),
    ];
    let mut wrong = Vec::new();
    for (args, want) in cases {
        let (got, said) = kemu_in(state.path(), args);
        if got != *want {
            wrong.push(format!(
                "kemu {}: exit {got}, want {want}: {said}",
                args.join(" ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
