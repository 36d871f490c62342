//! `kemu list`: every lab that is up, with its hosts, age, state and API address.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::output::{Format, age, now};
use crate::lab::state::{LabDir, LabRecord, ProcessRecord};
use crate::topology::LabName;

/// List the labs that are up.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One lab as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabSummary {
    pub name: String,
    pub hosts: usize,
    /// Seconds since the epoch (`None` when `lab.json` cannot be read).
    pub created: Option<u64>,
    pub age_seconds: Option<u64>,
    /// `running`, `degraded` (an agent is not running), `supervisor-dead`, `network-only`,
    /// or `broken` (its state cannot be read: `kemu down` still removes it).
    pub state: String,
    /// `https://127.0.0.1:<port>`, for labs with an API server.
    pub api: Option<String>,
    pub source: Option<std::path::PathBuf>,
}

/// What the state directory says about `lab`.
fn summarize(lab: &LabName, now: u64) -> LabSummary {
    let broken = || LabSummary {
        name: lab.to_string(),
        hosts: 0,
        created: None,
        age_seconds: None,
        state: "broken".into(),
        api: None,
        source: None,
    };
    let Ok(dir) = LabDir::new(lab) else {
        return broken();
    };
    let Ok(record) = dir
        .owner
        .read_to_string(&dir.lab_json())
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str::<LabRecord>(&t)?))
    else {
        return broken();
    };
    let processes = ProcessRecord::all(&dir);
    let supervisor_alive = processes
        .iter()
        .any(|p| p.what == "supervisor" && p.is_alive());
    let agents = crate::lab::supervisor::read_status(&dir);
    let state = if record.api_port.is_none() && !processes.iter().any(|p| p.what == "supervisor") {
        "network-only"
    } else if !supervisor_alive {
        "supervisor-dead"
    } else if agents.iter().any(|a| {
        let shown = super::status::shown_state(a, &processes);
        shown != "running" && shown != "adopted"
    }) {
        "degraded"
    } else {
        "running"
    };
    LabSummary {
        name: lab.to_string(),
        hosts: record.topology.hosts.len(),
        created: Some(record.created),
        age_seconds: Some(now.saturating_sub(record.created)),
        state: state.into(),
        api: record.api_port.map(|p| format!("https://127.0.0.1:{p}")),
        source: record.source,
    }
}

/// The table (an empty list says how to start a lab).
pub fn render_table(labs: &[LabSummary]) -> String {
    use std::fmt::Write;
    if labs.is_empty() {
        return "no labs are up (start one with `kemu up topologies/seed.yaml`)\n".into();
    }
    let width = labs.iter().map(|l| l.name.len()).max().unwrap_or(0).max(4) + 2;
    let mut out = format!(
        "{:<width$}{:<7}{:<7}{:<17}{:<25}SOURCE\n",
        "NAME", "HOSTS", "AGE", "STATE", "API"
    );
    for l in labs {
        let _ = writeln!(
            out,
            "{:<width$}{:<7}{:<7}{:<17}{:<25}{}",
            l.name,
            l.hosts,
            l.age_seconds.map(age).unwrap_or_else(|| "-".into()),
            l.state,
            l.api.as_deref().unwrap_or("-"),
            l.source
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    out
}

pub fn run(args: ListArgs) -> anyhow::Result<ExitCode> {
    let now = now();
    let labs: Vec<LabSummary> = crate::lab::list_labs()
        .iter()
        .map(|l| summarize(l, now))
        .collect();
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&labs)?),
        Format::Table => print!("{}", render_table(&labs)),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lines_up_every_state() {
        let lab =
            |name: &str, hosts, age: Option<u64>, state: &str, port: Option<u16>| LabSummary {
                name: name.into(),
                hosts,
                created: age.map(|a| 1_000_000 - a),
                age_seconds: age,
                state: state.into(),
                api: port.map(|p| format!("https://127.0.0.1:{p}")),
                source: port.map(|_| "topologies/seed.yaml".into()),
            };
        let labs = [
            lab("seed", 4, Some(75), "running", Some(40123)),
            lab(
                "e2e-iptables-long",
                100,
                Some(7300),
                "degraded",
                Some(41000),
            ),
            lab("net", 3, Some(5), "network-only", None),
            lab("old", 0, None, "broken", None),
        ];
        crate::testing::snapshot_settings().bind(|| {
            insta::assert_snapshot!(render_table(&labs));
        });
        assert_eq!(
            render_table(&[]),
            "no labs are up (start one with `kemu up topologies/seed.yaml`)\n"
        );
    }
}
