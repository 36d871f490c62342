//! The README's tutorial is copy-paste exact: this test runs its commands, in order, on a real
//! lab and compares what each prints with what the README shows.
//!
//! The convention in the README's section "Tutorial: ..." (stated there too):
//! - a ```` ```console ```` block is a transcript: a line `$ COMMAND` is a command, the lines
//!   under it (up to the next `$ ` line or the block's end) are what it prints on stdout;
//! - a line `...` stands for any number of lines left out;
//! - a ```` ```mermaid ```` block right after a console block is the output of that block's
//!   last command (GitHub draws it as a picture);
//! - ```` ```sh ```` blocks (installing kemu) are not run: the test uses the binaries it built.
//!
//! What may differ, and only that: ages and timings (`3s`, `0.181s`), the API server's port
//! on 127.0.0.1 (the kernel picks it), and runs of spaces (kubectl widens a column when an
//! age grows a digit). Commands that only read (kubectl get/describe, curl, kemu snapshot,
//! reach, graph) are run again for up to 30 s while their output differs, since the cluster
//! settles at its own pace (pods starting, rules syncing), as it does for a reader.
//!
//! The commands run as the README writes them, with `sudo` a no-op (the test is root), the
//! built binaries first on PATH and a kubeconfig of the test's own; the lab `seed` is given a
//! unique name (`kemu up ... --name`, the word `seed` in other commands), mapped back to
//! `seed` in the outputs. Every output, as printed, goes to
//! target/readme-tutorial.actual.md, to paste from when the README needs updating.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One command of the tutorial and the output the README shows for it.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    command: String,
    output: Vec<String>,
}

/// The README's lab name, which the test replaces.
const LAB: &str = "seed";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The section whose title starts with `## Tutorial`.
fn tutorial(readme: &str) -> &str {
    let start = readme.find("\n## Tutorial").expect("README has a tutorial") + 1;
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The steps of a tutorial, by the convention above.
fn steps(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Which block we are in, and whether the last block was a console block with only blank
    // lines after it.
    let mut block: Option<&str> = None;
    let mut after_console = false;
    for line in text.lines() {
        match block {
            None => {
                if let Some(kind) = line.strip_prefix("```") {
                    block = Some(kind.trim());
                    if kind.trim() != "mermaid" {
                        after_console = false;
                    }
                } else if !line.trim().is_empty() {
                    after_console = false;
                }
            }
            Some(kind) if line.starts_with("```") => {
                after_console = kind == "console";
                block = None;
            }
            Some("console") => match line.strip_prefix("$ ") {
                Some(command) => steps.push(Step {
                    command: command.to_string(),
                    output: Vec::new(),
                }),
                None => steps
                    .last_mut()
                    .expect("a console block starts with a command")
                    .output
                    .push(line.to_string()),
            },
            Some("mermaid") if after_console => {
                let last = steps.last_mut().expect("a command before the picture");
                last.output.push(line.to_string());
            }
            Some(_) => {}
        }
    }
    steps
}

/// An age or a timing as kubectl and kemu print them: `45s`, `3m`, `2m3s`, `0.181s`, `12ms`.
fn is_duration(token: &str) -> bool {
    let mut rest = token;
    let mut groups = 0;
    while !rest.is_empty() {
        let number = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number == 0 || !rest.as_bytes()[0].is_ascii_digit() {
            return false;
        }
        rest = &rest[number..];
        let unit = ["ms", "s", "m", "h", "d"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        groups += 1;
    }
    groups > 0
}

/// A line as compared: ages and timings as `<age>`, the local API port as `<port>`, spaces
/// collapsed.
fn normalize(line: &str) -> String {
    line.split_whitespace()
        .map(|token| {
            if is_duration(token) {
                return "<age>".to_string();
            }
            if let Some(at) = token.find("127.0.0.1:") {
                let head = &token[..at + "127.0.0.1:".len()];
                let tail = token[head.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
                return format!("{head}<port>{tail}");
            }
            token.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn trimmed(lines: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = lines.iter().map(|l| normalize(l)).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Whether `actual` is what `expected` shows, `...` standing for any lines.
fn matches(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|k| matches(rest, &actual[k..])),
        Some((e, rest)) => actual.first() == Some(e) && matches(rest, &actual[1..]),
    }
}

/// The command with the lab renamed: `kemu up` gets `--name`, the word `seed` becomes `lab`.
fn renamed(command: &str, lab: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for word in command.split(' ') {
        words.push(if word == LAB { lab.into() } else { word.into() });
        let n = words.len();
        if n >= 2 && words[n - 2] == "kemu" && words[n - 1] == "up" {
            words.push(format!("--name {lab}"));
        }
    }
    words.join(" ")
}

/// Commands that change nothing, run again while their output differs.
fn read_only(command: &str) -> bool {
    [
        " get ",
        " describe ",
        "curl ",
        "kemu snapshot ",
        "kemu reach ",
        "kemu graph ",
    ]
    .iter()
    .any(|w| command.contains(w))
}

/// Tears the lab down if the tutorial did not get to its own `kemu down`.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = common::kemu().args(["down", &self.0, "-q"]).output();
    }
}

#[test]
fn the_convention_reads_commands_outputs_and_pictures() {
    let text = "intro\n\n```sh\nsudo make install\n```\n\n```console\n$ alias k='kemu exec seed'\n$ k get pods\nNAME   AGE\n...\n$ kemu graph seed\n```\n\n```mermaid\nflowchart TB\n```\n\ntext\n\n```mermaid\nnot an output\n```\n";
    let s = steps(text);
    assert_eq!(
        s,
        vec![
            Step {
                command: "alias k='kemu exec seed'".into(),
                output: vec![]
            },
            Step {
                command: "k get pods".into(),
                output: vec!["NAME   AGE".into(), "...".into()]
            },
            Step {
                command: "kemu graph seed".into(),
                output: vec!["flowchart TB".into()]
            },
        ]
    );
    assert_eq!(
        renamed("sudo kemu up topologies/seed.yaml --seed 2015", "t1"),
        "sudo kemu up --name t1 topologies/seed.yaml --seed 2015"
    );
    assert_eq!(
        renamed(
            "alias k='sudo kemu exec seed 192.168.0.201 -- kubectl'",
            "t1"
        ),
        "alias k='sudo kemu exec t1 192.168.0.201 -- kubectl'"
    );
}

#[test]
fn only_ages_timings_the_local_port_and_spacing_may_differ() {
    let lines = |text: &str| -> Vec<String> {
        trimmed(&text.lines().map(String::from).collect::<Vec<_>>())
    };
    let expected = lines(
        "lab seed is up: 4 hosts in 0.181s\nnginx   1/1   Running   3s    172.16.2.2\n...\n(context kemu-seed, https://127.0.0.1:40111)\n",
    );
    let actual = lines(
        "lab seed is up: 4 hosts in 1.5s\nnginx   1/1   Running   2m3s   172.16.2.2\nmore\nlines\n(context kemu-seed, https://127.0.0.1:35012)\n\n",
    );
    assert!(matches(&expected, &actual));
    for drifted in [
        "lab seed is up: 5 hosts in 1.5s\nnginx 1/1 Running 3s 172.16.2.2\n(context kemu-seed, https://127.0.0.1:1)",
        "lab seed is up: 4 hosts in 1.5s\nnginx 1/1 Running 3s 172.16.2.3\n(context kemu-seed, https://127.0.0.1:1)",
        "lab seed is up: 4 hosts in 1.5s\nnginx 1/1 Running 3s 172.16.2.2\n(context kemu-other, https://127.0.0.1:1)",
        "lab seed is up: 4 hosts in 1.5s\nnginx 1/1 Running 3s 172.16.2.2",
    ] {
        assert!(!matches(&expected, &lines(drifted)), "{drifted}");
    }
    assert!(!is_duration("v1.32.4") && !is_duration("443/TCP") && !is_duration("s"));
}

#[test]
fn the_tutorial_runs_as_the_readme_shows() {
    let readme = readme();
    let steps = steps(tutorial(&readme));
    assert!(
        steps.iter().any(|s| s.command.contains("kemu up")) && steps.len() > 10,
        "the tutorial's commands were not found: {steps:#?}"
    );
    let lab = common::unique_name("tut");
    let _down = Down(lab.clone());
    let kubeconfig = tempfile::tempdir().unwrap();
    // The commands run where the README says (the clone's top directory, for `topologies/`,
    // `examples/` and `tests/fixtures/`), but what they write lands in a directory of the test.
    let work = tempfile::tempdir().unwrap();
    for dir in ["topologies", "examples", "tests"] {
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
            work.path().join(dir),
        )
        .unwrap();
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kemu")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut aliases = Vec::new();
    let mut transcript = String::new();
    let mut failures = Vec::new();
    for step in &steps {
        let command = renamed(&step.command, &lab);
        if command.starts_with("alias ") {
            assert!(step.output.is_empty(), "{}", step.command);
            aliases.push(command);
            transcript.push_str(&format!("$ {}\n", step.command));
            continue;
        }
        let script = format!("sudo() {{ \"$@\"; }}\n{}\n{command}\n", aliases.join("\n"));
        let expected = trimmed(&step.output);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (ok, stdout, stderr) = loop {
            let out = Command::new("bash")
                .args(["-O", "expand_aliases", "-c", &script])
                .current_dir(work.path())
                .env("PATH", &path)
                .env("KUBECONFIG", kubeconfig.path().join("config"))
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run bash");
            let stdout = String::from_utf8_lossy(&out.stdout).replace(&lab, LAB);
            let stderr = String::from_utf8_lossy(&out.stderr).replace(&lab, LAB);
            let actual: Vec<String> = stdout.lines().map(String::from).collect();
            let ok = out.status.success() && matches(&expected, &trimmed(&actual));
            if ok || !read_only(&command) || Instant::now() > deadline {
                break (ok, stdout, stderr);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        transcript.push_str(&format!("$ {}\n{stdout}", step.command));
        if !ok {
            failures.push(format!(
                "$ {}\n--- the README shows:\n{}\n--- it printed:\n{stdout}--- on stderr:\n{stderr}",
                step.command,
                step.output.join("\n")
            ));
        }
    }
    let actual_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/readme-tutorial.actual.md"
    );
    std::fs::write(actual_file, &transcript).unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} commands of the README's tutorial print something else (all outputs: {actual_file}):\n\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n\n")
    );
    // The tutorial ends with `kemu down`, which leaves nothing behind.
    common::assert_lab_gone(&lab);
}
