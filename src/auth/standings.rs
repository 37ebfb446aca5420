//! Users' standings (role, status, overdue) in memory: fresh for the
//! standing TTL, kept current by the changes `auth::revocations` hears, and
//! still usable for the stale-if-error window while the database cannot
//! answer — but never once a change to that user was heard.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::auth::revocations::{ReadMark, Revocations};
use crate::models::user::Standing;

/// At this many entries the cache is cut to three quarters on insert.
const SWEEP_ABOVE: usize = 100_000;

/// While this instance cannot hear Redis a change may be missed, so a
/// standing is fresh for at most this long (the TTL from before changes were
/// pushed).
const UNHEARD_TTL: Duration = Duration::from_secs(1);

/// What is cached per user.
#[derive(Debug, Clone, Copy)]
pub struct CachedStanding {
    pub standing: Standing,
    /// Owes an invoice past its due date plus the overdue grace.
    pub overdue: bool,
    /// Which changes it has seen (taken before the database was asked).
    mark: ReadMark,
    /// When the database was asked.
    read_at: Instant,
}

pub struct Standings {
    ttl: Duration,
    stale_if_error: Duration,
    entries: RwLock<HashMap<Uuid, CachedStanding>>,
}

impl Standings {
    pub fn new(ttl: Duration, stale_if_error: Duration) -> Self {
        Self {
            ttl,
            stale_if_error,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// How long an entry can matter at all (fresh or stale): what
    /// `Revocations::prune` must remember changes for.
    pub fn longest_use(&self) -> Duration {
        self.ttl.max(self.stale_if_error)
    }

    /// The standing, if read within the TTL (a second while Redis is not
    /// heard), since the last resync, and no change to the user was heard
    /// since.
    pub fn fresh(&self, user: Uuid, revocations: &Revocations) -> Option<CachedStanding> {
        let entry = *self.entries.read().unwrap_or_else(|e| e.into_inner()).get(&user)?;
        let ttl = if revocations.hearing() {
            self.ttl
        } else {
            self.ttl.min(UNHEARD_TTL)
        };
        (entry.read_at.elapsed() < ttl && revocations.still_current(user, entry.mark)).then_some(entry)
    }

    /// For when the database cannot answer: the standing read within the
    /// stale-if-error window, unless a change to the user was heard since.
    /// `since_resync`: also not one read before the last resync — changes
    /// made while this instance was not listening are unknown, and a
    /// demoted admin must not act on an old role (signed-in routes ask for
    /// this; metered calls, which only count, do not).
    pub fn stale(&self, user: Uuid, revocations: &Revocations, since_resync: bool) -> Option<CachedStanding> {
        let entry = *self.entries.read().unwrap_or_else(|e| e.into_inner()).get(&user)?;
        let known = if since_resync {
            revocations.still_current(user, entry.mark)
        } else {
            revocations.unchanged_since(user, entry.mark)
        };
        (entry.read_at.elapsed() < self.stale_if_error && known).then_some(entry)
    }

    /// Stores what the database said in a read that started at
    /// (`mark`, `read_at`); a read that a change overtook is not kept.
    pub fn put(
        &self,
        user: Uuid,
        standing: Standing,
        overdue: bool,
        mark: ReadMark,
        read_at: Instant,
        revocations: &Revocations,
    ) -> CachedStanding {
        let entry = CachedStanding {
            standing,
            overdue,
            mark,
            read_at,
        };
        if !revocations.unchanged_since(user, mark) {
            return entry;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= SWEEP_ABOVE {
            // Down to three quarters in one pass (too old first, then any: a
            // standing evicted early is only read again), so no insert after
            // it pays for a sweep until a quarter more users arrived.
            let longest = self.longest_use();
            entries.retain(|_, e| e.read_at.elapsed() < longest);
            let excess = entries.len().saturating_sub(SWEEP_ABOVE / 4 * 3);
            let evicted: Vec<Uuid> = entries.keys().take(excess).copied().collect();
            for id in evicted {
                entries.remove(&id);
            }
        }
        entries.insert(user, entry);
        entry
    }

    /// Drops entries too old to be used even while the database is down.
    pub fn prune(&self) {
        let longest = self.longest_use();
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, e| e.read_at.elapsed() < longest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Role, UserStatus};
    use crate::redis_store::Event;

    fn active() -> Standing {
        Standing {
            capped: false,
            role: Role::Consumer,
            status: UserStatus::Active,
        }
    }

    #[test]
    fn fresh_within_the_ttl_stale_within_the_window_and_never_after_a_change() {
        let revocations = Revocations::new();
        revocations.resynced([]);
        let standings = Standings::new(Duration::from_secs(30), Duration::from_secs(60));
        let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [user, other] {
            standings.put(
                id,
                active(),
                false,
                revocations.read_mark(),
                Instant::now(),
                &revocations,
            );
        }
        assert!(standings.fresh(user, &revocations).is_some());
        revocations.apply(&Event::UserChanged { user });
        assert!(standings.fresh(user, &revocations).is_none(), "a change heard: re-read");
        assert!(
            standings.stale(user, &revocations, false).is_none(),
            "and never used stale"
        );
        revocations.resynced([]);
        assert!(standings.fresh(other, &revocations).is_none(), "re-read after a resync");
        assert!(
            standings.stale(other, &revocations, false).is_some(),
            "usable if the database is down"
        );

        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(61)) else {
            panic!("the monotonic clock starts later than a minute before now")
        };
        standings.put(other, active(), false, revocations.read_mark(), long_ago, &revocations);
        assert!(standings.stale(other, &revocations, false).is_none(), "past the window");
    }

    #[test]
    fn a_read_overtaken_by_a_change_is_not_kept_and_a_zero_ttl_keeps_only_stale() {
        let revocations = Revocations::new();
        revocations.resynced([]);
        let standings = Standings::new(Duration::ZERO, Duration::from_secs(60));
        let user = Uuid::new_v4();
        let mark = revocations.read_mark();
        revocations.apply(&Event::UserChanged { user });
        standings.put(user, active(), false, mark, Instant::now(), &revocations);
        assert!(standings.stale(user, &revocations, false).is_none());
        standings.put(
            user,
            active(),
            false,
            revocations.read_mark(),
            Instant::now(),
            &revocations,
        );
        assert!(
            standings.fresh(user, &revocations).is_none(),
            "a zero TTL: always re-read"
        );
        assert!(standings.stale(user, &revocations, false).is_some());
    }
}
