//! Each lab's range of host uids and gids for its pods' user namespaces (root in a pod is the
//! range's first id; see `runtime::process::userns`): [`SIZE`] ids at `FIRST + slot * SIZE`,
//! the lowest slot that no other lab's `lab.json` holds and that no host user, group, or
//! `/etc/subuid` or `/etc/subgid` range overlaps. `kemu up` chooses it under an exclusive
//! lock of `<state root>/pod-id-ranges.lock` and keeps the lock until its `lab.json` records
//! the range, so two labs going up at once never get the same one.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use crate::fsguard::OwnedDir;
use crate::runtime::process::userns::IdRange;

/// Ids per lab: a pod has the uids and gids 0-65535, like a Kubernetes pod with its own user
/// namespace.
pub const SIZE: u32 = 65536;
/// The first id of slot 0 (2^30), far above the ids of host users and of `useradd`'s subuid
/// ranges (100000 up).
pub const FIRST: u32 = 1 << 30;
/// Slots up to 2^31: every pod gid stays within the pod networks' `ping_group_range` of
/// `0 2147483647`, so pods can ping.
pub const SLOTS: u32 = ((1u64 << 31) - FIRST as u64).div_ceil(SIZE as u64) as u32;

/// The range of a slot.
pub fn slot(n: u32) -> IdRange {
    IdRange::new(FIRST + n * SIZE, SIZE).expect("slots are below 2^31")
}

/// The lowest slot that overlaps no range of `taken` (other labs') nor of `host` (host users
/// and groups, subordinate id ranges).
pub fn choose(taken: &[IdRange], host: &[IdRange]) -> Option<IdRange> {
    (0..SLOTS)
        .map(slot)
        .find(|r| !taken.iter().chain(host).any(|t| t.overlaps(r)))
}

/// The ids the host already uses: every uid and gid of `/etc/passwd`, every gid of
/// `/etc/group` (single ids), and every range of `/etc/subuid` and `/etc/subgid`.
pub fn host_ids(passwd: &str, group: &str, subuid: &str, subgid: &str) -> Vec<IdRange> {
    let fields = |line: &str| -> Vec<String> { line.split(':').map(str::to_string).collect() };
    // Ranges as far as they can overlap a slot: id 0 and 2^32-1 never do.
    let span = |start: u32, count: u32| {
        let (lo, hi) = (
            start.max(1),
            (u64::from(start) + u64::from(count)).min(u32::MAX.into()),
        );
        IdRange::new(lo, u32::try_from(hi.saturating_sub(lo.into())).ok()?).ok()
    };
    let single = |id: &str| span(id.parse().ok()?, 1);
    let mut ids = Vec::new();
    for line in passwd.lines() {
        let f = fields(line);
        ids.extend(f.get(2).and_then(|id| single(id)));
        ids.extend(f.get(3).and_then(|id| single(id)));
    }
    for line in group.lines() {
        ids.extend(fields(line).get(2).and_then(|id| single(id)));
    }
    for line in subuid.lines().chain(subgid.lines()) {
        let f = fields(line);
        if let (Some(Ok(start)), Some(Ok(count))) = (
            f.get(1).map(|s| s.parse::<u32>()),
            f.get(2).map(|s| s.parse::<u32>()),
        ) {
            ids.extend(span(start, count));
        }
    }
    ids
}

/// The one field of another lab's `lab.json` this needs (absent in labs made before ranges).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordedRange {
    pod_id_range: Option<IdRange>,
}

/// The ranges of the labs under `state_root`.
fn taken(state_root: &Path) -> Vec<IdRange> {
    let Ok(entries) = std::fs::read_dir(state_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path().join("lab.json")).ok())
        .filter_map(|bytes| serde_json::from_slice::<RecordedRange>(&bytes).ok())
        .filter_map(|r| r.pod_id_range)
        .collect()
}

/// Choose the range of a new lab. The lock is held until the returned guard is dropped: drop
/// it once the lab's `lab.json` records the range.
pub fn allocate(state_root: &OwnedDir) -> anyhow::Result<(IdRange, Flock<File>)> {
    let path = state_root.root().join("pod-id-ranges.lock");
    let file = state_root
        .open_append(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", path.display()))?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let host = host_ids(
        &read("/etc/passwd"),
        &read("/etc/group"),
        &read("/etc/subuid"),
        &read("/etc/subgid"),
    );
    let range = choose(&taken(state_root.root()), &host).context(
        "no free range of host ids for the lab's pods: every slot is taken by another lab or by host users",
    )?;
    Ok((range, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_the_space_between_2_to_the_30_and_2_to_the_31() {
        assert_eq!(SLOTS, 16384);
        assert_eq!(slot(0), IdRange::new(1_073_741_824, 65536).unwrap());
        assert_eq!(slot(1).start, 1_073_741_824 + 65536);
        assert_eq!(slot(SLOTS - 1).end(), 1 << 31);
    }

    #[test]
    fn the_lowest_slot_free_of_labs_and_host_ids() {
        assert_eq!(choose(&[], &[]), Some(slot(0)));
        assert_eq!(choose(&[slot(0), slot(2)], &[]), Some(slot(1)));
        // A host user in slot 1 and a subuid range across slots 2 and 3.
        let host = host_ids(
            "root:x:0:0:root:/root:/bin/bash\nodd:x:1073807400:100:odd:/:/bin/false\n",
            "root:x:0:\n",
            "build:1073872896:131072\n",
            "",
        );
        assert_eq!(choose(&[slot(0)], &host), Some(slot(4)));
        // A group id alone also takes its slot.
        let group = host_ids("", "g:x:1073741825:\n", "", "");
        assert_eq!(choose(&[], &group), Some(slot(1)));
    }

    #[test]
    fn other_labs_ranges_come_from_their_lab_json() {
        let root = tempfile::tempdir().unwrap();
        for (lab, json) in [
            (
                "a",
                r#"{"podIdRange": {"start": 1073741824, "size": 65536}, "other": 1}"#,
            ),
            (
                "b",
                r#"{"podIdRange": {"start": 1073872896, "size": 65536}}"#,
            ),
            ("old", r#"{"apiPort": 1}"#),
            ("broken", "{"),
        ] {
            std::fs::create_dir(root.path().join(lab)).unwrap();
            std::fs::write(root.path().join(lab).join("lab.json"), json).unwrap();
        }
        let mut found = taken(root.path());
        found.sort_by_key(|r| r.start);
        assert_eq!(found, [slot(0), slot(2)]);
        let (range, _lock) = allocate(&OwnedDir::new(root.path()).unwrap()).unwrap();
        assert_eq!(range, slot(1));
    }

    #[test]
    fn host_files_with_odd_lines_are_read_for_what_they_hold() {
        let ids = host_ids(
            "# comment\nbroken\nu:x:1000:1000::/:/bin/sh\n",
            "",
            "x:4294967295:10\nbad:line\n",
            "all:0:4294967295\n",
        );
        assert_eq!(
            ids,
            vec![
                IdRange::new(1000, 1).unwrap(),
                IdRange::new(1000, 1).unwrap(),
                IdRange::new(1, 4294967294).unwrap(),
            ]
        );
        assert_eq!(choose(&[], &ids), None);
        assert_eq!(choose(&(0..SLOTS).map(slot).collect::<Vec<_>>(), &[]), None);
    }
}
