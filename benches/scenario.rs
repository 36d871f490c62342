//! `kemu run`'s overhead over a scenario's own steps: each shipped scenario (examples/
//! scenarios/) run three times; the steps' time is what the run prints for each step, the
//! overhead everything else (lab up and down, manifests, artifacts bookkeeping, the runner).
//! Needs root (it builds labs). Writes its section of BENCHMARKS.md.

mod common;

use std::process::Command;
use std::time::Instant;

const RUNS: usize = 3;

struct Run {
    total_ms: f64,
    steps_ms: f64,
    up_ms: f64,
}

fn run(file: &str) -> Run {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["run", file])
        .output()
        .expect("run kemu run");
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{file} failed:\n{text}");
    // `[i/n] what: ok (123 ms)` per step; `(lab up in 0.4s)` at the end.
    let steps_ms = text
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| {
            l.rsplit_once('(')?
                .1
                .strip_suffix(" ms)")?
                .parse::<f64>()
                .ok()
        })
        .sum();
    let up_ms = text
        .rsplit_once("lab up in ")
        .and_then(|(_, r)| r.split_once("s)"))
        .and_then(|(n, _)| n.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1e3;
    Run {
        total_ms,
        steps_ms,
        up_ms,
    }
}

fn main() {
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scenarios"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .filter(|p| p.ends_with(".yaml"))
            .collect();
    files.sort();
    let mut rows = String::new();
    let mut worst: f64 = 0.0;
    for file in &files {
        let runs: Vec<Run> = (0..RUNS).map(|_| run(file)).collect();
        let median = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let overhead = median(|r| r.total_ms - r.steps_ms);
        worst = worst.max(overhead);
        let name = std::path::Path::new(file)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        rows.push_str(&format!(
            "| `{name}` | {:.1} s | {:.1} s | {:.0} ms | {:.0} ms |\n",
            median(|r| r.total_ms) / 1e3,
            median(|r| r.steps_ms) / 1e3,
            median(|r| r.up_ms),
            overhead,
        ));
        println!("{name}: overhead {overhead:.0} ms");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let section = format!(
        "<!-- scenario:begin -->\n## Scenarios: `kemu run`'s overhead\n\nReproduce with `sudo cargo bench --bench scenario` (release build). Each scenario of examples/scenarios/ run {RUNS} times, medians shown. Steps: the sum of the times `kemu run` prints for its steps (waits, traffic with its timeouts, sleeps). Overhead: the rest of the wall time, i.e. `kemu up`, the manifests, `kemu down` and the runner itself. Load average at the end of the run: {}.\n\n| scenario | total | steps | lab up | overhead |\n|---|---:|---:|---:|---:|\n{rows}\nTarget: a scenario's overhead over its own steps <= 1 s: {} (worst {worst:.0} ms).\n<!-- scenario:end -->\n",
        load.join(" "),
        if worst <= 1000.0 { "met" } else { "missed" },
    );
    common::write_section("scenario", &section);
}
