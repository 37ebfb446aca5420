//! The in-memory side of durable metering: the group of calls waiting for
//! the next commit. A call adds its delta to the open group and waits for
//! the group's outcome; the committer (`Meter::commit_group`) takes the whole
//! group at once, writes it in one transaction and answers every waiter with
//! one send, so no call makes a database round trip of its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::models::usage::{UsageDelta, UsageKey};

/// What a group's calls learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOutcome {
    /// The group's counts are committed: its calls may be answered.
    Committed,
    /// The group could not be committed in time: its calls are answered 503
    /// and the meter settles them as failed (`Meter::settle_given_up`).
    GivenUp,
}

/// A group taken for commit: merged deltas, sorted by key (the lock order).
pub struct Group {
    pub rows: Vec<(UsageKey, UsageDelta)>,
    pub calls: u64,
    done: watch::Sender<Option<GroupOutcome>>,
}

impl Group {
    /// Answers every call of the group at once.
    pub fn answer(self, outcome: GroupOutcome) {
        self.done.send_replace(Some(outcome));
    }
}

struct Open {
    rows: HashMap<UsageKey, UsageDelta>,
    calls: u64,
    done: watch::Sender<Option<GroupOutcome>>,
}

impl Default for Open {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            calls: 0,
            done: watch::channel(None).0,
        }
    }
}

/// The longest the committer waits for a group to gather (see
/// [`Groups::gather`]); tokio's timer rounds it up to its 1 ms tick, so a
/// group starts within about 3 ms of being due.
pub const GATHER_AT_MOST: Duration = Duration::from_millis(2);

#[derive(Default)]
pub struct Groups {
    open: Mutex<Open>,
    /// Wakes the committer when an empty group gets its first call. A permit
    /// is kept if the committer is busy, so it starts the next group as soon
    /// as the previous one is answered.
    arrived: Notify,
    /// The open group's size the committer is gathering towards (0: none).
    gather_target: AtomicU64,
    /// Wakes the committer when the open group reaches `gather_target`.
    gathered: Notify,
}

impl Groups {
    /// Joins the open group and waits for its outcome. Cancel-safe in the
    /// only way that matters: a call whose client went away is still counted
    /// with its group (as a batched call would be).
    pub async fn join(&self, key: UsageKey, delta: UsageDelta) -> GroupOutcome {
        let mut done = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.rows.entry(key).or_default().add(delta);
            if open.calls == 0 {
                self.arrived.notify_one();
            }
            open.calls += delta.calls.unsigned_abs();
            let target = self.gather_target.load(Ordering::Relaxed);
            if target != 0 && open.calls >= target {
                self.gathered.notify_one();
            }
            open.done.subscribe()
        };
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.unwrap_or(GroupOutcome::GivenUp),
            // The group was dropped unanswered (the committer panicked): its
            // fate is unknown, so the call must not be served.
            Err(_) => GroupOutcome::GivenUp,
        }
    }

    /// Resolves once a call is waiting (at once if one arrived meanwhile).
    pub async fn calls_waiting(&self) {
        self.arrived.notified().await;
    }

    /// Before the next group is taken (a call is waiting): the clients of
    /// the group just answered usually call again within a fraction of a
    /// millisecond, and a commit costs about the same for 30 calls as for 60
    /// (it is mostly the WAL flush), so waiting for them — until the open
    /// group holds `target` calls (those answered plus those already waiting
    /// then, see `Meter::commit_group`), or [`GATHER_AT_MOST`] — about
    /// doubles the calls per commit under load. A lone call on a quiet
    /// server (`target` 1) is not held.
    pub async fn gather(&self, target: u64) {
        if target <= 1 || self.waiting_calls() >= target {
            return;
        }
        self.gather_target.store(target, Ordering::Relaxed);
        let gathered = self.gathered.notified();
        if self.waiting_calls() < target {
            let _ = tokio::time::timeout(GATHER_AT_MOST, gathered).await;
        }
        self.gather_target.store(0, Ordering::Relaxed);
    }

    /// Takes the open group, leaving an empty one for the calls that follow.
    pub fn take(&self) -> Option<Group> {
        let taken = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.calls == 0 {
                return None;
            }
            std::mem::take(&mut *open)
        };
        let mut rows: Vec<_> = taken.rows.into_iter().collect();
        rows.sort_unstable_by_key(|(k, _)| *k);
        Some(Group {
            rows,
            calls: taken.calls,
            done: taken.done,
        })
    }

    /// Calls in the open group (not yet taken for commit).
    pub fn waiting_calls(&self) -> u64 {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Day;
    use std::sync::Arc;
    use uuid::Uuid;

    #[tokio::test]
    async fn waiters_learn_their_own_groups_outcome_and_deltas_merge_by_key() {
        let groups = Arc::new(Groups::default());
        let key = UsageKey {
            user_id: Uuid::new_v4(),
            api_id: 1,
            day: "2026-11-30".parse::<Day>().unwrap(),
            second: 1_764_460_800,
        };
        let first: Vec<_> = (0..3)
            .map(|i| {
                let groups = groups.clone();
                tokio::spawn(async move { groups.join(key, UsageDelta::one(i == 0)).await })
            })
            .collect();
        while groups.waiting_calls() < 3 {
            tokio::task::yield_now().await;
        }
        let group = groups.take().unwrap();
        assert_eq!(group.calls, 3);
        assert_eq!(
            group.rows,
            vec![(
                key,
                UsageDelta {
                    calls: 3,
                    failed_calls: 1,
                    ..UsageDelta::default()
                }
            )]
        );
        assert!(groups.take().is_none(), "the next group starts empty");
        let second = {
            let groups = groups.clone();
            tokio::spawn(async move { groups.join(key, UsageDelta::one(false)).await })
        };
        while groups.waiting_calls() < 1 {
            tokio::task::yield_now().await;
        }
        group.answer(GroupOutcome::GivenUp);
        for waiter in first {
            assert_eq!(waiter.await.unwrap(), GroupOutcome::GivenUp);
        }
        groups.take().unwrap().answer(GroupOutcome::Committed);
        assert_eq!(second.await.unwrap(), GroupOutcome::Committed);
    }
}
