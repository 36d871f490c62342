//! `kemu logs LAB [HOST [AGENT]] [-f]`: the agents' logs, from `/run/kemu/<lab>/logs/`
//! (`<host>/<agent>.log`, and `supervisor.log`). One file is printed as it is; several are
//! printed one after another with each line prefixed `host/agent | `, as `docker compose
//! logs` does. `-f` follows them until interrupted or until the lab goes down.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::lab::state::{LabDir, LabRecord};

/// Print the logs of a lab's agents.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Only this host's agents (host name or underlay IP).
    pub host: Option<String>,
    /// Only this agent of the host (apiserver, kubelet, proxy ...).
    pub agent: Option<String>,
    /// Keep printing what is appended, until interrupted or the lab goes down.
    #[arg(long, short)]
    pub follow: bool,
}

/// One log file and the label its lines get.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogFile {
    label: String,
    path: PathBuf,
}

/// The agents that have a log on `host`: the `*.log` files of its log directory, sorted.
fn agents_of(dir: &LabDir, host: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.logs().join(host))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".log")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The files a selection means, in a stable order: the supervisor's first, then host by host
/// in the topology's order.
fn select(dir: &LabDir, record: &LabRecord, args: &LogsArgs) -> anyhow::Result<Vec<LogFile>> {
    let hosts: Vec<&crate::topology::Host> = match &args.host {
        Some(key) => vec![record.host(key)?],
        None => record.topology.hosts.iter().collect(),
    };
    let mut files = Vec::new();
    if args.host.is_none() {
        files.push(LogFile {
            label: "supervisor".into(),
            path: dir.logs().join("supervisor.log"),
        });
    }
    for host in hosts {
        let agents = agents_of(dir, &host.name);
        let chosen: Vec<String> = match &args.agent {
            Some(agent) if agents.contains(agent) => vec![agent.clone()],
            Some(agent) => {
                return Err(super::exit::usage(format!(
                    "host {} of lab {} has no agent {agent:?} with a log; it has: {}",
                    host.name,
                    record.topology.name,
                    if agents.is_empty() {
                        "none".to_string()
                    } else {
                        agents.join(", ")
                    }
                )));
            }
            None => agents,
        };
        for agent in chosen {
            files.push(LogFile {
                label: format!("{}/{agent}", host.name),
                path: dir.logs().join(&host.name).join(format!("{agent}.log")),
            });
        }
    }
    Ok(files)
}

/// Where one followed file is, and the part of a line not yet ended.
struct Cursor {
    file: LogFile,
    at: u64,
    partial: Vec<u8>,
}

/// Print what was appended to `c` since the last call (from the start after a truncation).
fn drain(dir: &LabDir, c: &mut Cursor, prefix: &str, out: &mut impl Write) -> std::io::Result<()> {
    let Ok(mut file) = dir.owner.open_read(&c.file.path) else {
        return Ok(()); // not there (yet)
    };
    let len = file.metadata()?.len();
    if len < c.at {
        c.at = 0;
        c.partial.clear();
    }
    file.seek(SeekFrom::Start(c.at))?;
    let mut fresh = Vec::new();
    file.read_to_end(&mut fresh)?;
    c.at += fresh.len() as u64;
    c.partial.extend_from_slice(&fresh);
    while let Some(end) = c.partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = c.partial.drain(..=end).collect();
        out.write_all(prefix.as_bytes())?;
        out.write_all(&line)?;
    }
    Ok(())
}

/// `host/agent | `, padded so that the lines of several files line up.
fn prefix(label: &str, width: usize, several: bool) -> String {
    if several {
        format!("{label:<width$} | ")
    } else {
        String::new()
    }
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let files = select(&dir, &record, &args)?;
    let several = files.len() > 1;
    let width = files.iter().map(|f| f.label.len()).max().unwrap_or(0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.follow {
        for f in &files {
            let Ok(file) = dir.owner.open_read(&f.path) else {
                continue;
            };
            let prefix = prefix(&f.label, width, several);
            for line in BufReader::new(file).split(b'\n') {
                out.write_all(prefix.as_bytes())?;
                out.write_all(&line?)?;
                out.write_all(b"\n")?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cursors: Vec<Cursor> = files
        .into_iter()
        .map(|file| Cursor {
            file,
            at: 0,
            partial: Vec::new(),
        })
        .collect();
    loop {
        for c in &mut cursors {
            drain(&dir, c, &prefix(&c.file.label, width, several), &mut out)?;
        }
        out.flush()?;
        if !lab_is_up(&dir.root) {
            eprintln!("lab {} is down", args.lab);
            return Ok(ExitCode::SUCCESS);
        }
        // A new agent (a restart with another name, a daemon) shows up on the next rounds.
        if let Ok(now) = select(&dir, &record, &args) {
            for file in now {
                if !cursors.iter().any(|c| c.file == file) {
                    cursors.push(Cursor {
                        file,
                        at: 0,
                        partial: Vec::new(),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lab_is_up(root: &Path) -> bool {
    root.join("lab.json").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_prints_whole_lines_and_starts_over_after_a_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::at(tmp.path().join("lab")).unwrap();
        std::fs::create_dir_all(dir.logs().join("h")).unwrap();
        let path = dir.logs().join("h/kubelet.log");
        let mut c = Cursor {
            file: LogFile {
                label: "h/kubelet".into(),
                path: path.clone(),
            },
            at: 0,
            partial: Vec::new(),
        };
        let mut out = Vec::new();
        drain(&dir, &mut c, "p | ", &mut out).unwrap(); // no file yet
        std::fs::write(&path, "one\ntw").unwrap();
        drain(&dir, &mut c, "p | ", &mut out).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "p | one\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"o\nthree\n").unwrap();
        drain(&dir, &mut c, "p | ", &mut out).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "p | one\np | two\np | three\n"
        );
        std::fs::write(&path, "new\n").unwrap();
        drain(&dir, &mut c, "p | ", &mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).ends_with("p | three\np | new\n"));
    }

    #[test]
    fn a_log_that_is_a_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::at(tmp.path().join("lab")).unwrap();
        std::fs::create_dir_all(dir.logs().join("h")).unwrap();
        std::fs::write(tmp.path().join("secret"), "secret\n").unwrap();
        let path = dir.logs().join("h/kubelet.log");
        std::os::unix::fs::symlink(tmp.path().join("secret"), &path).unwrap();
        let mut c = Cursor {
            file: LogFile {
                label: "h/kubelet".into(),
                path,
            },
            at: 0,
            partial: Vec::new(),
        };
        let mut out = Vec::new();
        drain(&dir, &mut c, "", &mut out).unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
}
