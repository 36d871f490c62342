//! The history of a lab's faults, `<lab dir>/faults-history.jsonl`: one line per fault applied
//! or removed (and per agent crashed or restarted), with its time, for `kemu events`.
//! [`super::state::FaultState::save`] writes it by comparing the faults before and after, so
//! every command that changes faults is recorded the same way.

use std::io::Write;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::lab::state::LabDir;

/// What happened to a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Applied,
    Removed,
    /// A one-off act with nothing to remove (an agent killed or restarted).
    Done,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at: Timestamp,
    pub action: Action,
    /// The fault as `kemu status` describes it.
    pub fault: String,
}

/// `<lab dir>/faults-history.jsonl`.
pub fn path(dir: &LabDir) -> PathBuf {
    dir.root.join("faults-history.jsonl")
}

/// What changed between two descriptions of a lab's faults (`FaultState::describe`): the
/// lines that went, then the lines that came.
pub fn changes(before: &[String], after: &[String]) -> Vec<(Action, String)> {
    let removed = before
        .iter()
        .filter(|l| !after.contains(l))
        .map(|l| (Action::Removed, l.clone()));
    let applied = after
        .iter()
        .filter(|l| !before.contains(l))
        .map(|l| (Action::Applied, l.clone()));
    removed.chain(applied).collect()
}

/// Append events, all stamped now.
pub fn append(dir: &LabDir, events: &[(Action, String)]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let at = Timestamp::now();
    let mut text = String::new();
    for (action, fault) in events {
        let event = FaultEvent {
            at,
            action: *action,
            fault: fault.clone(),
        };
        text.push_str(&serde_json::to_string(&event)?);
        text.push('\n');
    }
    // One write: lines of concurrent writers do not interleave (O_APPEND).
    dir.owner
        .open_append(&path(dir))?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// The whole history, oldest first (lines that do not parse are skipped).
pub fn read(dir: &LabDir) -> Vec<FaultEvent> {
    std::fs::read_to_string(path(dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_removals_then_additions() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let before = s(&["link a:eth0: delay 10ms", "partition (data plane): a <-> b"]);
        let after = s(&["link a:eth0: delay 20ms", "partition (data plane): a <-> b"]);
        assert_eq!(
            changes(&before, &after),
            [
                (Action::Removed, "link a:eth0: delay 10ms".to_string()),
                (Action::Applied, "link a:eth0: delay 20ms".to_string())
            ]
        );
        assert!(changes(&after, &after).is_empty());
    }
}
