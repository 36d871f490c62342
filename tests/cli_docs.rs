//! The README cannot drift from the command line: its command table names every command
//! `kemu --help` shows (and no other), and its exit-code table is the convention the code
//! applies (`kemu::cli::exit::CONVENTION`).

use clap::CommandFactory;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The lines of the README's section `## title`.
fn section(readme: &str, title: &str) -> String {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + title.len() + 5..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

#[test]
fn the_command_table_names_every_launcher_command() {
    let readme = readme();
    let commands = section(&readme, "Commands");
    let documented: std::collections::BTreeSet<String> = commands
        .lines()
        .filter_map(|l| l.strip_prefix("| `kemu "))
        .filter_map(|l| l.split([' ', '`']).next())
        .map(String::from)
        .collect();
    // The agents are documented below the table, by name.
    let agents = [
        "apiserver",
        "scheduler",
        "controller-manager",
        "kubelet",
        "flanneld",
        "proxy",
        "netpol",
    ];
    let cli = kemu::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_string();
        if !documented.contains(&name) && !agents.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "README's command table lacks: {missing:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|d| cli.find_subcommand(d).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "README documents no such commands: {unknown:?}"
    );
}

#[test]
fn the_exit_code_table_is_the_convention() {
    let readme = readme();
    let commands = section(&readme, "Commands");
    let rows: Vec<(u8, String)> = commands
        .lines()
        .skip_while(|l| !l.starts_with("| exit code |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells[0].parse().unwrap(), cells[1].to_string())
        })
        .collect();
    let want: Vec<(u8, String)> = kemu::cli::exit::CONVENTION
        .iter()
        .map(|(code, text)| (*code, text.to_string()))
        .collect();
    assert_eq!(
        rows, want,
        "README's exit-code table and exit::CONVENTION differ"
    );
}

/// `kemu completions` and `kemu man` come from the same definitions as `--help`: every
/// visible command is in the bash script and has a page, and the hidden helpers have no page.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let run = |args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kemu"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kemu {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _kemu"), "{bash}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(run(&["completions", shell]).contains("kemu"), "{shell}");
    }
    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH kemu"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    let cli = kemu::cli::Cli::command();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let page = dir.path().join(format!("kemu-{name}.1"));
        assert_eq!(page.exists(), !sub.is_hide_set(), "{}", page.display());
        if !sub.is_hide_set() {
            assert!(
                bash.contains(&format!(
                    "kemu__subcmd__{}",
                    name.replace('-', "__subcmd__")
                )),
                "{name} not in bash completions"
            );
            let text = std::fs::read_to_string(&page).unwrap();
            // roff escapes '-' and the apostrophe: compare with them put back.
            let text = text.replace("\\-", "-").replace("\\*(Aq", "'");
            let about = sub.get_about().unwrap().to_string();
            assert!(text.contains(&about), "{name}: {about} not in its page");
        }
    }
    assert!(dir.path().join("kemu.1").exists());
}

/// The topology fields the README documents are the parser's: its generated reference table is
/// what `kemu schema --reference` prints now, and its annotated example parses and uses every
/// field of the schema (so nothing is left out, and nothing is shown that the parser rejects).
#[test]
fn the_topology_reference_and_example_are_the_schema() {
    let readme = readme();
    let section = section(&readme, "Topology files");
    let begin = section
        .find("<!-- topology-reference: begin")
        .expect("reference block");
    let block = &section[begin..];
    let block =
        &block[block.find('\n').unwrap() + 1..block.find("<!-- topology-reference: end").unwrap()];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["schema", "--reference"])
        .output()
        .unwrap();
    assert_eq!(
        block,
        String::from_utf8_lossy(&out.stdout),
        "README's topology reference is stale: paste `kemu schema --reference`"
    );

    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an annotated example");
    if let Err(e) = kemu::topology::parse("README example", example) {
        panic!("the README's example does not parse: {e}");
    }
    // Every path the example uses, `hosts[].roles` style.
    fn paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.insert(path.clone());
                match v {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            paths(item, &format!("{path}[]."), out);
                        }
                    }
                    other => paths(other, &format!("{path}."), out),
                }
            }
        }
    }
    let value: serde_json::Value = serde_saphyr::from_str(example).unwrap();
    let mut used = std::collections::BTreeSet::new();
    paths(&value, "", &mut used);
    let schema: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new(env!("CARGO_BIN_EXE_kemu"))
            .arg("schema")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown fields are refused"
    );
    let documented: std::collections::BTreeSet<String> = block
        .lines()
        .skip(2)
        .filter_map(|l| l.split('`').nth(1))
        .map(String::from)
        .collect();
    let missing: Vec<&String> = documented.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the README's example leaves out {missing:?}"
    );
    let unknown: Vec<&String> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "the README's example uses fields the schema lacks: {unknown:?}"
    );
}
