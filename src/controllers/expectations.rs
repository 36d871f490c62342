//! Controller expectations (client-go's `UIDTrackingControllerExpectations`): what an owner's
//! sync has asked the API server for and its informer has not shown yet. A ReplicaSet or
//! ReplicationController that creates two pods expects two creations; until the informer shows
//! them (or the expectations expire), its syncs update the status but create and delete nothing,
//! so a lagging or re-listing informer never makes it create the same pods again.
//!
//! - [`Expectations::expect_creations`] / [`Expectations::expect_deletions`] are called before
//!   the API calls and replace what the owner expected before.
//! - Informer events lower them: a new pod of the owner is a creation; a pod of the owner that
//!   got a `deletionTimestamp` or went away is a deletion, counted once per pod key (the update
//!   and the delete event of one pod are one deletion).
//! - API calls that failed (so the informer will never show them) are lowered by the caller.
//! - Five minutes after they were set, expectations count as met whatever happened.
//!
//! Pure: time is passed in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::informer::Key;

/// After this long, unmet expectations no longer hold an owner back (`ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone)]
struct Expected {
    creations: i64,
    /// Pods (namespace/name) whose deletion was asked for and not yet seen.
    deletions: HashSet<Key>,
    set: Instant,
}

/// The expectations of every owner of one kind, by owner key.
#[derive(Debug, Default)]
pub struct Expectations {
    owners: HashMap<Key, Expected>,
}

impl Expectations {
    /// The owner is about to create `n` pods.
    pub fn expect_creations(&mut self, owner: &Key, n: usize, now: Instant) {
        self.owners.insert(
            owner.clone(),
            Expected {
                creations: n as i64,
                deletions: HashSet::new(),
                set: now,
            },
        );
    }

    /// The owner is about to delete `pods`.
    pub fn expect_deletions(
        &mut self,
        owner: &Key,
        pods: impl IntoIterator<Item = Key>,
        now: Instant,
    ) {
        self.owners.insert(
            owner.clone(),
            Expected {
                creations: 0,
                deletions: pods.into_iter().collect(),
                set: now,
            },
        );
    }

    /// A pod of the owner appeared (or one creation will never appear: it failed).
    pub fn creation_observed(&mut self, owner: &Key) {
        if let Some(e) = self.owners.get_mut(owner) {
            e.creations -= 1;
        }
    }

    /// A pod of the owner is being deleted or gone (or its deletion failed).
    pub fn deletion_observed(&mut self, owner: &Key, pod: &Key) {
        if let Some(e) = self.owners.get_mut(owner) {
            e.deletions.remove(pod);
        }
    }

    /// Whether the owner may create and delete pods: nothing expected is missing, or the
    /// expectations are older than [`EXPECTATIONS_TIMEOUT`], or there are none.
    pub fn satisfied(&self, owner: &Key, now: Instant) -> bool {
        match self.owners.get(owner) {
            None => true,
            Some(e) => {
                (e.creations <= 0 && e.deletions.is_empty())
                    || now.saturating_duration_since(e.set) > EXPECTATIONS_TIMEOUT
            }
        }
    }

    /// The owner is gone.
    pub fn forget(&mut self, owner: &Key) {
        self.owners.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Op {
        Create(usize),
        Delete(&'static [&'static str]),
        Created,
        Deleted(&'static str),
        Forget,
        /// Time passes (seconds).
        Wait(u64),
    }
    use Op::*;

    /// Each step: do `op` to the owner `default/rc`, then its sync may act or not.
    fn run(steps: &[(Op, bool)]) {
        let owner = Key::new("default", "rc");
        let other = Key::new("default", "other");
        let mut e = Expectations::default();
        let mut now = Instant::now();
        for (i, (op, satisfied)) in steps.iter().enumerate() {
            match op {
                Create(n) => e.expect_creations(&owner, *n, now),
                Delete(pods) => {
                    e.expect_deletions(&owner, pods.iter().map(|p| Key::new("default", *p)), now)
                }
                Created => e.creation_observed(&owner),
                Deleted(p) => e.deletion_observed(&owner, &Key::new("default", *p)),
                Forget => e.forget(&owner),
                Wait(s) => now += Duration::from_secs(*s),
            }
            assert_eq!(e.satisfied(&owner, now), *satisfied, "step {i}");
            assert!(
                e.satisfied(&other, now),
                "step {i}: another owner is not held back"
            );
        }
    }

    #[test]
    fn creations_hold_the_owner_until_the_informer_shows_them() {
        run(&[
            (Wait(0), true),
            (Create(2), false),
            (Created, false),
            (Created, true),
            // More pods than expected (someone else's, or a relist) do not hold it back.
            (Created, true),
            (Create(1), false),
            (Forget, true),
            (Created, true),
        ]);
    }

    #[test]
    fn each_deleted_pod_counts_once() {
        run(&[
            (Delete(&["a", "b"]), false),
            // The deletionTimestamp update and the delete event of one pod.
            (Deleted("a"), false),
            (Deleted("a"), false),
            // A pod not asked for.
            (Deleted("c"), false),
            (Deleted("b"), true),
            // New expectations replace the old ones.
            (Delete(&["d"]), false),
            (Create(1), false),
            (Deleted("d"), false),
            (Created, true),
        ]);
    }

    #[test]
    fn expectations_expire_after_five_minutes() {
        run(&[
            (Create(3), false),
            (Wait(299), false),
            (Wait(1), false),
            (Wait(1), true),
            (Create(1), false),
        ]);
    }
}
