//! Hostile and careless lab names on every command that takes one, end to end.
//!
//! An earlier kemu deleted real directories for `kemu down /`, `..` or `../../some/dir`. These
//! tests never hand kemu a name that could reach a real directory: each runs kemu inside a
//! private mount namespace (`unshare --mount`) with a fresh tmpfs over `/run`, the state root
//! at `/run/t/a/b/c/kemu` (`KEMU_STATE_DIR`), and only names whose `..`s stay inside that tmpfs
//! (at most four). Absolute names (`/`, `/etc`) are tested against the pure validator and guard
//! only (`topology::name`, `fsguard` unit tests). Inside the tmpfs, victim files sit where each
//! name would lead; a listing of the whole tmpfs before and after shows that nothing changed,
//! and every command must exit with 2 (a usage error) before touching anything.

use std::collections::BTreeMap;
use std::process::Command;

/// Names that must be refused. None has more than four `..`, none is absolute.
const RELATIVE_HOSTILE: &[&str] = &[
    "",
    ".",
    "..",
    "../..",
    "../../..",
    "a/b",
    "../x",
    "../../some/dir",
    "../../../../victim",
    "./kemu",
    "seed/..",
    "seed/../..",
    "victim/../../x",
    "..seed",
    "seed\n",
    "se\ned",
    " seed",
    "Seed",
    "seеd",
    "seed\u{200b}",
    "seed\u{2215}x",
    "*",
    "-",
    "~",
    "$HOME",
];

/// Every command that takes a lab name, with `{}` where the name goes.
const COMMANDS: &[&[&str]] = &[
    &["down", "{}"],
    &["status", "{}"],
    &["status", "{}", "-o", "json"],
    &["exec", "{}", "host", "--", "true"],
    &["reach", "{}"],
    &["snapshot", "{}"],
    &["proxy", "mode", "{}", "iptables"],
    &["up", "topologies/seed.yaml", "--name", "{}"],
    &["up", "--dry-run", "topologies/seed.yaml", "--name", "{}"],
    &["supervise", "{}"],
];

/// The shell script run in the private mount namespace: prepare the tmpfs and its victims,
/// list it, run every command, list it again. Commands and names come through the environment
/// (NAME_i, CMD_j), so no name is ever parsed by the shell.
const SCRIPT: &str = r#"
set -u
mount -t tmpfs -o size=16m,mode=755 kemu-hostile-test /run
mkdir -p /run/t/a/b/c/kemu/victim /run/t/a/b/c/kemu/a/b /run/t/a/b/some/dir /run/t/a/b/c/x /run/t/victim
for d in /run/t /run/t/a /run/t/a/b /run/t/a/b/c /run/t/a/b/c/kemu /run/t/a/b/c/kemu/victim \
         /run/t/a/b/c/kemu/a/b /run/t/a/b/some/dir /run/t/a/b/c/x /run/t/victim; do
  echo keep > "$d/keep"
  echo '{"topology":{}}' > "$d/lab.json"
done
# A symlink planted in the state root that leads out of it, dressed up as a lab.
mkdir -p /run/t/outside
echo keep > /run/t/outside/keep
touch /run/t/outside/.kemu-lab /run/t/outside/lab.json /run/t/outside/journal
ln -s /run/t/outside /run/t/a/b/c/kemu/evil
listing() { (cd /run/t && find . -printf '%p %y %s %m %l\n' | LC_ALL=C sort); }
listing > /run/.before
i=0
while [ "$i" -lt "$NAMES" ]; do
  j=0
  while [ "$j" -lt "$COMMANDS" ]; do
    eval "name=\$NAME_$i"
    eval "cmd=\$CMD_$j"
    # Split the command on the unit separator and put the name in place of {}.
    set --
    old_ifs=$IFS; IFS=$(printf '\037')
    for word in $cmd; do
      if [ "$word" = "{}" ]; then set -- "$@" "$name"; else set -- "$@" "$word"; fi
    done
    IFS=$old_ifs
    "$KEMU" "$@" >/dev/null 2>/run/.err
    code=$?
    echo "result $i $j $code $(head -c 300 /run/.err | tr '\n' ' ')"
    j=$((j + 1))
  done
  i=$((i + 1))
done
# The planted symlink: a valid name whose directory leads out.
for cmd in down status snapshot reach; do
  "$KEMU" $cmd evil >/dev/null 2>/run/.err
  echo "evil $cmd $? $(head -c 300 /run/.err | tr '\n' ' ')"
done
listing > /run/.after
if cmp -s /run/.before /run/.after; then echo "tree unchanged"; else echo "tree changed:"; diff /run/.before /run/.after; fi
exit 0
"#;

#[test]
fn hostile_lab_names_are_refused_by_every_command_and_change_nothing() {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KEMU", env!("CARGO_BIN_EXE_kemu"))
        .env("KEMU_STATE_DIR", "/run/t/a/b/c/kemu")
        .env("NAMES", RELATIVE_HOSTILE.len().to_string())
        .env("COMMANDS", COMMANDS.len().to_string());
    for (i, name) in RELATIVE_HOSTILE.iter().enumerate() {
        cmd.env(format!("NAME_{i}"), name);
    }
    for (j, words) in COMMANDS.iter().enumerate() {
        cmd.env(format!("CMD_{j}"), words.join("\u{1f}"));
    }
    let out = cmd.output().expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("tree "),
        "the private mount namespace could not be prepared: {stderr}"
    );

    let mut wrong = Vec::new();
    let mut seen = 0;
    for line in stdout.lines() {
        let mut words = line.splitn(5, ' ');
        match words.next() {
            Some("result") => {
                let i: usize = words.next().unwrap().parse().unwrap();
                let j: usize = words.next().unwrap().parse().unwrap();
                let code = words.next().unwrap();
                let message = words.next().unwrap_or("");
                seen += 1;
                if code != "2" || !message.contains("lab name") {
                    wrong.push(format!(
                        "kemu {} with name {:?}: exit {code}: {message}",
                        COMMANDS[j].join(" "),
                        RELATIVE_HOSTILE[i]
                    ));
                }
            }
            Some("evil") => {
                let mut words = line.splitn(4, ' ').skip(1);
                let what = words.next().unwrap();
                let code = words.next().unwrap();
                let message = words.next().unwrap_or("");
                if code == "0" || !message.contains("symlink") {
                    wrong.push(format!(
                        "kemu {what} evil (a symlink out of the state root): exit {code}: {message}"
                    ));
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        RELATIVE_HOSTILE.len() * COMMANDS.len(),
        "not every command ran:\n{stdout}\n{stderr}"
    );
    assert!(
        wrong.is_empty(),
        "commands that did not refuse a hostile name with exit code 2:\n{}",
        wrong.join("\n")
    );
    assert!(
        stdout.contains("tree unchanged"),
        "files changed inside the temporary /run:\n{}",
        stdout
            .lines()
            .skip_while(|l| !l.starts_with("tree changed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A state root that is not a plain absolute directory is refused before anything is touched:
/// `KEMU_STATE_DIR=/` would make every lab name a directory of `/`.
#[test]
fn a_bad_state_root_is_refused() {
    let mut results = BTreeMap::new();
    for root in ["/", "relative/dir", "/run/../etc", "/run/./kemu"] {
        // `status` with a valid name: it only reads, so even a wrong answer could not harm.
        let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
            .args(["status", "etc"])
            .env("KEMU_STATE_DIR", root)
            .output()
            .unwrap();
        results.insert(
            root,
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
        );
    }
    for (root, (code, stderr)) in &results {
        assert_ne!(*code, Some(0), "KEMU_STATE_DIR={root} was accepted");
        assert!(
            stderr.contains("KEMU_STATE_DIR"),
            "KEMU_STATE_DIR={root}: the error does not name the variable: {stderr}"
        );
    }
}
