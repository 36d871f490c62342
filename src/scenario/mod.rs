//! Scenarios: a multi-node behaviour reproduced from one file (`kemu run SCENARIO.yaml`).
//!
//! A scenario names a topology (a file, or inline), manifests to apply once the lab is up, and
//! ordered steps: apply, wait, fault and heal, exec, traffic, reach, snapshot, kubectl, sleep.
//! A step may carry expectations; the first unmet one ends the run with exit code 1 and an
//! artifacts folder (rules, conntrack, events, objects, agent logs). The lab is always torn down.
//!
//! - this module: the file's model and its parsing, with the file, line and field in errors;
//! - [`expect`]: expectations and their evaluation (pure);
//! - [`flows`]: TCP, HTTP and UDP traffic from inside a host's or a pod's namespace;
//! - [`runner`]: the steps against a live lab.

pub mod expect;
pub mod flows;
pub mod runner;

use std::time::Duration;

use serde::Deserialize;

use expect::{Count, OutputExpect};

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A topology file (relative to the scenario's folder) or the topology itself.
    pub topology: TopologySource,
    /// Seed of the lab's random choices (`--seed` on the command line wins).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Manifests applied once the lab is up, in order (files relative to the scenario's folder).
    #[serde(default)]
    pub manifests: Vec<Manifest>,
    pub steps: Vec<Step>,
}

/// Where the topology comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TopologySource {
    File(String),
    Inline(serde_json::Value),
}

/// A manifest: a file, or its text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Manifest {
    File(String),
    Inline {
        #[serde(rename = "manifest")]
        text: String,
    },
}

/// One step; exactly one action per step.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// `kubectl apply` of a file or an inline manifest.
    Apply(Manifest),
    /// `kubectl wait`: `for` is kubectl's (`condition=Ready`, `jsonpath={.status.phase}=Running`,
    /// `delete`), `object` what to wait on (`pod/web`, `pods -l app=web`).
    Wait(Wait),
    /// A fault command of kemu with the lab filled in: `link 192.168.0.202 --mtu 1400`,
    /// `partition 192.168.0.202 --plane control`, `node stop 192.168.0.203`,
    /// `agent kill 192.168.0.202 proxy`.
    Fault(String),
    /// `kemu heal`: every fault removed.
    Heal(bool),
    /// A command on a host (`on: 192.168.0.202`) or in a pod (`on: pod/default/web`).
    Exec(Exec),
    /// Connections or datagrams from a host or a pod, counted.
    Traffic(Traffic),
    /// `kemu reach` with its arguments (e.g. `[--expect, reach.txt]`); its exit status is
    /// expected to be 0 unless told otherwise.
    Reach(ReachStep),
    /// The rules of a host, as `kemu snapshot` prints them, with lines that must (not) be there.
    Snapshot(SnapshotStep),
    /// Any kubectl command, with expectations on its output.
    Kubectl(KubectlStep),
    /// A pause (`2s`, `500ms`).
    Sleep(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    #[serde(rename = "for")]
    pub condition: String,
    pub object: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "60s".into()
}

/// A command line: a list, or one string for `sh -c`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

impl Command {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(a) => a.clone(),
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub on: String,
    pub command: Command,
    #[serde(default)]
    pub expect: OutputExpect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubectlStep {
    pub args: Vec<String>,
    #[serde(default)]
    pub expect: OutputExpect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReachStep {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub expect: OutputExpect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotStep {
    pub host: String,
    #[serde(default)]
    pub contains: Vec<String>,
    #[serde(default)]
    pub absent: Vec<String>,
}

/// The protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// A connection that is accepted (and, with `size`, carries that many bytes out).
    Tcp,
    /// `GET /` answered with a status line.
    #[default]
    Http,
    /// A datagram answered by one (agnhost netexec's UDP `hostname` command).
    Udp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// `HOST` or `pod/NS/NAME`.
    pub from: String,
    /// `ADDR:PORT`, or `svc/NS/NAME:PORT` (the Service's ClusterIP).
    pub to: String,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default = "one")]
    pub count: u32,
    /// Bytes of payload per flow (HTTP: a request body; TCP: bytes written; UDP: the datagram
    /// is padded to this size).
    #[serde(default)]
    pub size: Option<usize>,
    /// Pause between flows.
    #[serde(default)]
    pub interval: Option<String>,
    /// Per-flow timeout (default 2s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Send every flow from this local port (UDP: one conntrack entry for all of them).
    #[serde(default)]
    pub source_port: Option<u16>,
    /// HTTP: the path asked for (default `/`; agnhost's `/hostname` names the serving pod).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub expect: TrafficExpect,
}

fn one() -> u32 {
    1
}

/// What a traffic step must see.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficExpect {
    /// How many flows succeed (`20`, `">=19"`, `"<1"`, `"0"`).
    #[serde(default)]
    pub ok: Option<Count>,
    /// Text every answer must contain (e.g. the serving pod's name).
    #[serde(default)]
    pub answers_contain: Option<String>,
    /// Text no answer may contain.
    #[serde(default)]
    pub answers_lack: Option<String>,
}

/// A scenario file's problem, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub field: String,
    pub message: String,
}

/// Parse a scenario (`file` names it in errors).
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let mut path = String::new();
    let parsed: Result<Scenario, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
    let scenario = parsed.map_err(|e| {
        let mut message = e.without_snippet().to_string();
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ScenarioError {
            file: file.into(),
            line,
            column,
            field: if path.is_empty() || path == "." {
                "(top level)".into()
            } else {
                path.clone()
            },
            message,
        }
    })?;
    check(file, &scenario)?;
    Ok(scenario)
}

/// What serde cannot check: durations, counts, step targets.
fn check(file: &str, s: &Scenario) -> Result<(), ScenarioError> {
    let bad = |field: String, message: String| ScenarioError {
        file: file.into(),
        line: 0,
        column: 0,
        field,
        message,
    };
    let duration = |field: String, text: &str| {
        parse_duration(text).map(|_| ()).ok_or_else(|| {
            bad(
                field,
                format!("{text:?} is not a duration (e.g. 500ms, 2s, 1m)"),
            )
        })
    };
    if s.steps.is_empty() {
        return Err(bad(
            "steps".into(),
            "a scenario needs at least one step".into(),
        ));
    }
    for (i, step) in s.steps.iter().enumerate() {
        let at = |what: &str| format!("steps[{i}].{what}");
        match step {
            Step::Sleep(d) => duration(at("sleep"), d)?,
            Step::Wait(w) => duration(at("wait.timeout"), &w.timeout)?,
            Step::Traffic(t) => {
                for (name, d) in [("interval", &t.interval), ("timeout", &t.timeout)] {
                    if let Some(d) = d {
                        duration(at(&format!("traffic.{name}")), d)?;
                    }
                }
                if !t.to.contains(':') {
                    return Err(bad(
                        at("traffic.to"),
                        format!("{:?} needs a port: ADDR:PORT or svc/NS/NAME:PORT", t.to),
                    ));
                }
            }
            Step::Fault(f) => {
                let command = f.split_whitespace().next().unwrap_or_default();
                if !FAULT_COMMANDS.contains(&command) {
                    return Err(bad(
                        at("fault"),
                        format!(
                            "{command:?} is not a fault command; one of {}",
                            FAULT_COMMANDS.join(", ")
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The kemu commands a `fault` step may run (each takes the lab as its first argument, after
/// the subcommand's own verb for `node` and `agent`).
pub const FAULT_COMMANDS: [&str; 5] = ["link", "partition", "node", "agent", "heal"];

/// `500ms`, `2s`, `1m`, `1.5s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    crate::topology::parse_duration_arg(text).ok()
}

/// The argv of `kemu <fault>` for lab `lab`: the lab goes after the verb (`node stop LAB
/// HOST`, `agent kill LAB HOST AGENT`) or after the command (`link LAB HOST ...`).
pub fn fault_argv(fault: &str, lab: &str) -> Vec<String> {
    let words: Vec<String> = fault.split_whitespace().map(String::from).collect();
    let verb_first = matches!(words.first().map(String::as_str), Some("node" | "agent"));
    let at = if verb_first { 2 } else { 1 }.min(words.len());
    let mut argv = words[..at].to_vec();
    argv.push(lab.to_string());
    argv.extend(words[at..].iter().cloned());
    argv
}

/// A short one-line description of a step, for progress lines and failure reports.
pub fn describe(step: &Step) -> String {
    match step {
        Step::Apply(Manifest::File(f)) => format!("apply {f}"),
        Step::Apply(Manifest::Inline { .. }) => "apply (inline manifest)".into(),
        Step::Wait(w) => format!("wait --for={} {}", w.condition, w.object),
        Step::Fault(f) => format!("fault: {f}"),
        Step::Heal(_) => "heal".into(),
        Step::Exec(e) => format!("exec on {}: {}", e.on, e.command.argv().join(" ")),
        Step::Traffic(t) => format!("traffic {:?} {} -> {} x{}", t.proto, t.from, t.to, t.count),
        Step::Reach(r) => format!("reach {}", r.args.join(" ")),
        Step::Snapshot(s) => format!("snapshot of {}", s.host),
        Step::Kubectl(k) => format!("kubectl {}", k.args.join(" ")),
        Step::Sleep(d) => format!("sleep {d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_commands_get_the_lab_in_the_right_place() {
        assert_eq!(
            fault_argv("link 192.168.0.202 --mtu 1400", "lab1").join(" "),
            "link lab1 192.168.0.202 --mtu 1400"
        );
        assert_eq!(
            fault_argv("node stop 192.168.0.203", "lab1").join(" "),
            "node stop lab1 192.168.0.203"
        );
        assert_eq!(
            fault_argv("agent kill 192.168.0.202 proxy", "l").join(" "),
            "agent kill l 192.168.0.202 proxy"
        );
        assert_eq!(fault_argv("heal", "l").join(" "), "heal l");
    }

    #[test]
    fn a_scenario_parses_and_bad_ones_name_the_place() {
        let ok = parse(
            "s.yaml",
            "name: t\ntopology: ../seed.yaml\nmanifests: [a.yaml, {manifest: \"kind: Pod\"}]\nsteps:\n- apply: b.yaml\n- wait: {for: condition=Ready, object: pod/web}\n- fault: link 192.168.0.202 --mtu 1400\n- traffic: {from: client, to: \"svc/default/web:80\", count: 5, expect: {ok: \">=4\"}}\n- heal: true\n- sleep: 1s\n",
        )
        .unwrap();
        assert_eq!(ok.steps.len(), 6);
        let e = parse("s.yaml", "name: t\ntopology: x.yaml\nsteps:\n- jump: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("s.yaml:4:"), "{e}");
        let e = parse(
            "s.yaml",
            "name: t\ntopology: x.yaml\nsteps:\n- sleep: soon\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yaml:0:0: steps[0].sleep: \"soon\" is not a duration (e.g. 500ms, 2s, 1m)"
        );
        let e = parse(
            "s.yaml",
            "name: t\ntopology: x.yaml\nsteps:\n- fault: reboot everything\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("\"reboot\" is not a fault command"),
            "{e}"
        );
    }
}
