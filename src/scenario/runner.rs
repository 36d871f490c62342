//! Running a scenario against a live lab. The lab is made with `kemu up` and ended with `kemu
//! down` whatever happens (unless `--keep`); steps drive it with kubectl and kemu's own
//! commands, as a person at a shell would, so that what a scenario does can be replayed by
//! hand from its progress lines.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::expect::{OutputExpect, check_traffic, tail};
use super::flows::{self, FlowSpec};
use super::{Manifest, Scenario, Step, TopologySource, describe, fault_argv, parse_duration};
use crate::lab::state::{LabDir, LabRecord};
use crate::topology::LabName;

/// How `kemu run` was asked to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub file: PathBuf,
    pub seed: Option<u64>,
    /// Where artifacts go: always written there when given; on failure only, to
    /// `kemu-artifacts/<name>-<time>` otherwise.
    pub artifacts: Option<PathBuf>,
    /// Leave the lab up afterwards.
    pub keep: bool,
    pub name: Option<LabName>,
}

/// Exit code of a scenario whose expectation was not met.
pub const UNMET: u8 = crate::cli::exit::FAILED;

/// Run the scenario; exit code 0 when every expectation held, 1 otherwise.
pub fn run(opts: &RunOptions) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&opts.file)
        .map_err(|e| crate::cli::exit::usage(format!("read {}: {e}", opts.file.display())))?;
    let scenario = super::parse(&opts.file.display().to_string(), &text)
        .map_err(|e| crate::cli::exit::usage(e.to_string()))?;
    let base = opts
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let started = Instant::now();
    let lab = match &opts.name {
        Some(n) => n.clone(),
        None => lab_name(&scenario.name)?,
    };
    let work = tempfile::tempdir().context("a temporary directory")?;
    let topology = match &scenario.topology {
        TopologySource::File(f) => base.join(f),
        TopologySource::Inline(value) => {
            // JSON is YAML: the inline topology is written as it was read.
            let path = work.path().join("topology.yaml");
            std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
            path
        }
    };
    eprintln!("scenario {}: lab {lab}", scenario.name);
    let mut up = kemu();
    up.arg("up")
        .arg(&topology)
        .args(["--name", lab.as_str(), "--quiet", "--no-kubeconfig"]);
    if let Some(seed) = opts.seed.or(scenario.seed) {
        up.args(["--seed", &seed.to_string()]);
    }
    let out = up.output().context("run kemu up")?;
    if !out.status.success() {
        anyhow::bail!(
            "kemu up {} failed:\n{}",
            topology.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut ctx = Ctx {
        lab: lab.clone(),
        kubeconfig: LabDir::new(&lab)?.root.join("kubeconfig"),
        base,
        work: work.path().to_path_buf(),
    };
    let overhead = started.elapsed();
    let failure = run_steps(&mut ctx, &scenario);
    let artifacts = match (&failure, &opts.artifacts) {
        (_, Some(dir)) => Some(dir.clone()),
        (Some(_), None) => Some(PathBuf::from("kemu-artifacts").join(format!(
            "{}-{}",
            lab,
            jiff::Zoned::now().strftime("%Y%m%d-%H%M%S")
        ))),
        (None, None) => None,
    };
    if let Some(dir) = &artifacts {
        if let Err(e) = collect(&ctx, dir) {
            eprintln!("collecting artifacts into {}: {e:#}", dir.display());
        } else {
            eprintln!("artifacts: {}", dir.display());
        }
    }
    if opts.keep {
        eprintln!("the lab stays up: kemu down {lab}");
    } else {
        let down = kemu().args(["down", lab.as_str(), "--quiet"]).output();
        if !down.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("kemu down {lab} failed; run it again by hand");
        }
    }
    match failure {
        None => {
            eprintln!(
                "scenario {}: {} steps met their expectations in {:.1}s (lab up in {:.1}s)",
                scenario.name,
                scenario.steps.len(),
                started.elapsed().as_secs_f64(),
                overhead.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(why) => {
            eprintln!("scenario {}: FAILED: {why}", scenario.name);
            Ok(ExitCode::from(UNMET))
        }
    }
}

/// A lab name from the scenario's: lowercase letters, digits and `-`, with a suffix so that
/// two runs of one scenario do not collide.
fn lab_name(scenario: &str) -> anyhow::Result<LabName> {
    let mut base: String = scenario
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(20);
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "run" } else { base };
    let suffix = std::process::id() % 100_000;
    Ok(LabName::parse(&format!("{base}-{suffix}"))?)
}

struct Ctx {
    lab: LabName,
    kubeconfig: PathBuf,
    base: PathBuf,
    work: PathBuf,
}

fn kemu() -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kemu"));
    let mut c = Command::new(exe);
    c.stdin(Stdio::null());
    c
}

impl Ctx {
    fn kubectl(&self, args: &[String]) -> anyhow::Result<Output> {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run kubectl (is it installed?)")
    }

    fn kemu(&self, args: &[String]) -> anyhow::Result<Output> {
        kemu().args(args).output().context("run kemu")
    }

    fn apply(&self, manifest: &Manifest) -> anyhow::Result<Output> {
        let path = match manifest {
            Manifest::File(f) => self.base.join(f),
            Manifest::Inline { text } => {
                let path = self.work.join("inline.yaml");
                std::fs::write(&path, text)?;
                path
            }
        };
        self.kubectl(&["apply".into(), "-f".into(), path.display().to_string()])
    }

    /// The network namespace of `HOST` or `pod/NS/NAME`.
    fn netns(&self, who: &str) -> anyhow::Result<String> {
        if let Some(pod) = who.strip_prefix("pod/") {
            let (ns, name) = pod
                .split_once('/')
                .with_context(|| format!("{who:?}: expected pod/NAMESPACE/NAME"))?;
            let uid = self.jsonpath(ns, &format!("pod/{name}"), "{.metadata.uid}")?;
            return Ok(crate::kubelet::sandbox::pod_namespace(
                self.lab.as_str(),
                &uid,
            ));
        }
        let (_, record) = LabRecord::open(&self.lab)?;
        let host = record.host(who)?;
        Ok(record.topology.host_namespace(host))
    }

    fn jsonpath(&self, ns: &str, object: &str, path: &str) -> anyhow::Result<String> {
        let out = self.kubectl(&[
            "get".into(),
            "-n".into(),
            ns.into(),
            object.into(),
            "-o".into(),
            format!("jsonpath={path}"),
        ])?;
        if !out.status.success() {
            anyhow::bail!("{object}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `ADDR:PORT` or `svc/NS/NAME:PORT`.
    fn target(&self, to: &str) -> anyhow::Result<std::net::SocketAddr> {
        let (what, port) = to
            .rsplit_once(':')
            .with_context(|| format!("{to:?} has no port"))?;
        let port: u16 = port.parse().with_context(|| format!("{to:?}: bad port"))?;
        let ip = match what.strip_prefix("svc/") {
            Some(svc) => {
                let (ns, name) = svc
                    .split_once('/')
                    .with_context(|| format!("{to:?}: expected svc/NAMESPACE/NAME:PORT"))?;
                self.jsonpath(ns, &format!("service/{name}"), "{.spec.clusterIP}")?
            }
            None => what.to_string(),
        };
        Ok(std::net::SocketAddr::new(
            ip.parse()
                .with_context(|| format!("{ip:?} is not an address"))?,
            port,
        ))
    }
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn must_succeed(out: &Output, what: &str) -> Option<String> {
    (!out.status.success()).then(|| format!("{what} failed:\n{}", tail(&text_of(out))))
}

/// Run the manifests and the steps; the first unmet expectation, if any.
fn run_steps(ctx: &mut Ctx, s: &Scenario) -> Option<String> {
    for m in &s.manifests {
        match ctx.apply(m) {
            Ok(out) => {
                if let Some(why) = must_succeed(&out, "applying a manifest") {
                    return Some(why);
                }
            }
            Err(e) => return Some(format!("{e:#}")),
        }
    }
    let total = s.steps.len();
    for (i, step) in s.steps.iter().enumerate() {
        let started = Instant::now();
        let what = describe(step);
        let result = run_step(ctx, step).unwrap_or_else(|e| Some(format!("{e:#}")));
        let ms = started.elapsed().as_millis();
        match result {
            None => eprintln!("[{}/{total}] {what}: ok ({ms} ms)", i + 1),
            Some(why) => {
                eprintln!("[{}/{total}] {what}: FAILED ({ms} ms)", i + 1);
                return Some(format!("step {} ({what}): {why}", i + 1));
            }
        }
    }
    None
}

fn run_step(ctx: &mut Ctx, step: &Step) -> anyhow::Result<Option<String>> {
    Ok(match step {
        Step::Apply(m) => must_succeed(&ctx.apply(m)?, "kubectl apply"),
        Step::Wait(w) => {
            let mut args = vec!["wait".to_string(), format!("--for={}", w.condition)];
            args.extend(w.object.split_whitespace().map(String::from));
            args.push(format!("--timeout={}", w.timeout));
            if let Some(ns) = &w.namespace {
                args.extend(["-n".into(), ns.clone()]);
            }
            must_succeed(&ctx.kubectl(&args)?, "kubectl wait")
        }
        Step::Fault(f) => must_succeed(&ctx.kemu(&fault_argv(f, ctx.lab.as_str()))?, "the fault"),
        Step::Heal(_) => must_succeed(
            &ctx.kemu(&["heal".into(), ctx.lab.to_string()])?,
            "kemu heal",
        ),
        Step::Exec(e) => {
            let out = if let Some(pod) = e.on.strip_prefix("pod/") {
                let (ns, name) = pod
                    .split_once('/')
                    .with_context(|| format!("{:?}: expected pod/NAMESPACE/NAME", e.on))?;
                let mut args: Vec<String> = vec![
                    "exec".into(),
                    "-n".into(),
                    ns.into(),
                    name.into(),
                    "--".into(),
                ];
                args.extend(e.command.argv());
                ctx.kubectl(&args)?
            } else {
                let mut args: Vec<String> = vec![
                    "exec".into(),
                    ctx.lab.to_string(),
                    e.on.clone(),
                    "--".into(),
                ];
                args.extend(e.command.argv());
                ctx.kemu(&args)?
            };
            e.expect.check(out.status.code(), &text_of(&out))
        }
        Step::Kubectl(k) => {
            let out = ctx.kubectl(&k.args)?;
            k.expect.check(out.status.code(), &text_of(&out))
        }
        Step::Reach(r) => {
            let mut args = vec!["reach".to_string(), ctx.lab.to_string()];
            args.extend(r.args.iter().map(|a| {
                // Files named by the scenario are relative to its folder.
                let p = ctx.base.join(a);
                if !a.starts_with('-') && p.exists() {
                    p.display().to_string()
                } else {
                    a.clone()
                }
            }));
            let out = ctx.kemu(&args)?;
            r.expect.check(out.status.code(), &text_of(&out))
        }
        Step::Snapshot(sn) => {
            let out = ctx.kemu(&["snapshot".into(), ctx.lab.to_string(), sn.host.clone()])?;
            let expect = OutputExpect {
                exit: Some(0),
                contains: sn.contains.clone(),
                lacks: sn.absent.clone(),
            };
            expect.check(out.status.code(), &text_of(&out))
        }
        Step::Sleep(d) => {
            std::thread::sleep(parse_duration(d).unwrap_or_default());
            None
        }
        Step::Traffic(t) => {
            let netns = ctx.netns(&t.from)?;
            let spec = FlowSpec {
                target: ctx.target(&t.to)?,
                proto: t.proto,
                count: t.count,
                size: t.size,
                interval: t
                    .interval
                    .as_deref()
                    .and_then(parse_duration)
                    .unwrap_or_default(),
                timeout: t
                    .timeout
                    .as_deref()
                    .and_then(parse_duration)
                    .unwrap_or(Duration::from_secs(2)),
                source_port: t.source_port,
                path: t.path.clone().unwrap_or_else(|| "/".into()),
            };
            let results = flows::run(&netns, &spec)?;
            let verdict = check_traffic(&t.expect, &results);
            if verdict.is_none() {
                eprintln!("      {}", super::expect::summarize(&results));
            }
            verdict
        }
    })
}

/// What a person debugging the run wants: objects, events, rules and conntrack of every host,
/// the lab's status and its agents' logs.
fn collect(ctx: &Ctx, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let save = |name: &str, out: anyhow::Result<Output>| {
        if let Ok(out) = out {
            let _ = std::fs::write(dir.join(name), text_of(&out));
        }
    };
    let kubectl =
        |args: &[&str]| ctx.kubectl(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    save(
        "objects.yaml",
        kubectl(&[
            "get",
            "all,configmaps,endpointslices,nodes",
            "-A",
            "-o",
            "yaml",
        ]),
    );
    save(
        "events.txt",
        kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
    );
    save(
        "status.txt",
        ctx.kemu(&["status".into(), ctx.lab.to_string()]),
    );
    save(
        "rules.txt",
        ctx.kemu(&["snapshot".into(), ctx.lab.to_string()]),
    );
    let (lab_dir, record) = LabRecord::open(&ctx.lab)?;
    for host in &record.topology.hosts {
        save(
            &format!("conntrack-{}.txt", host.name),
            ctx.kemu(&[
                "exec".into(),
                ctx.lab.to_string(),
                host.name.clone(),
                "--".into(),
                "conntrack".into(),
                "-L".into(),
            ]),
        );
    }
    // Agents' logs: copies, so that `down` removing the lab leaves them here.
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    for entry in walk(&lab_dir.root) {
        if entry.extension().is_some_and(|e| e == "log")
            && let Ok(rel) = entry.strip_prefix(&lab_dir.root)
        {
            let flat = rel.display().to_string().replace('/', "_");
            let _ = std::fs::copy(&entry, logs.join(flat));
        }
    }
    Ok(())
}

/// Every file under `dir` (not following links), up to a few levels.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 4 {
                stack.push((e.path(), depth + 1));
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
