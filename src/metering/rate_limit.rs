//! Per-user rate limits without a Redis round trip per call.
//!
//! The limit is one GCRA budget per user in Redis, shared by every
//! instance. An instance does not ask it per call: it *leases* several calls
//! in one atomic step (`RedisStore::lease_calls`: the budget is spent in
//! Redis at once) and hands them out from memory. Hence:
//!
//! - **Never above the limit.** Every call served was granted by Redis
//!   first, and Redis grants only what the GCRA allows, so the calls served
//!   across all instances since a user's budget was last full never exceed
//!   `burst + rate × elapsed`.
//! - **Refused slightly early, bounded.** Calls leased by another instance
//!   are not available here: a user at the limit may be refused while up to
//!   the lease cap (an eighth of the burst) calls per other instance sit in their memory.
//!   Those are spent by the user's own calls there, or — once the user has
//!   not called that instance for [`GIVE_BACK_IDLE`] — given back to the
//!   budget (checked every [`SWEEP_EVERY`] by `jobs`).
//! - **Leases follow demand.** A user's first call leases one; a lease used
//!   up within [`LEASE_TARGET`] of its grant doubles the next (up to the
//!   cap), a slower one halves it, so a lease lasts about that long: a
//!   user making 25 calls a second costs about one Redis command per 50
//!   calls, a busy one one per thousand, a quiet one about one per call.
//! - **In any window, the overshoot is bounded too.** A leased call may be
//!   spent later than Redis granted it, so calls can bunch: in any window
//!   the calls served exceed `burst + rate × window` by at most what the
//!   instances held at its start (`max_lease` each).
//! - **A refusal is remembered** for a quarter of a second (or until Redis
//!   said a call would fit, if sooner), so a client hammering past its
//!   limit costs Redis at most four commands a second per instance.
//! - Redis unreachable: calls are not limited (fail open), as before.
//!
//! `RateLimit-Remaining` is this instance's unspent lease plus what the
//! shared budget had left when it last leased: leases held by other
//! instances are not subtracted, so it may overstate by at most theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::redis_store::{LeaseGrant, RateLimit, RedisStore};

/// How long a lease should last: used up sooner, the next is twice as
/// large; later, half.
pub const LEASE_TARGET: Duration = Duration::from_secs(2);

/// A user who has not called this instance for this long gets its unused
/// leased calls given back to the shared budget.
pub const GIVE_BACK_IDLE: Duration = Duration::from_secs(1);

/// How often idle leases are given back and idle users forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The most calls one lease may take: an eighth of the burst (so eight
/// instances can hold a full lease each before a quiet user feels it),
/// at least one, at most this.
const LEASE_CAP: u32 = 1024;

/// How long a refusal is answered from memory before Redis is asked again:
/// calls given back by other instances may fit before the GCRA's own retry
/// time, and a client hammering past its limit costs Redis at most one
/// command per this, per instance.
const REFUSAL_MEMORY: Duration = Duration::from_millis(250);

/// A user with no lease and no refusal, idle this long, is forgotten.
const FORGET_IDLE: Duration = Duration::from_secs(10);

/// What the limit said about one call (the `RateLimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOutcome {
    pub limit: u32,
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the allowance is full again.
    pub reset_secs: u64,
    /// Seconds to wait before retrying (refused calls only).
    pub retry_after_secs: u64,
}

struct LeaseState {
    /// Leased calls not yet handed out.
    left: u32,
    /// How many the last grant gave, and when.
    granted: u32,
    granted_at: Instant,
    /// Where the last grant ended on Redis's TAT line (what giving its
    /// unused calls back may undo is bounded by it).
    grant_end_us: i64,
    /// What the shared budget had left after the grant.
    shared_remaining: u32,
    /// When the shared budget is full again (as of the grant).
    reset_at: Instant,
    /// Refused from memory until then (and when Redis said a call would
    /// fit again, for `Retry-After`).
    refused_until: Option<(Instant, Instant)>,
    /// How many to ask for next.
    want: u32,
    last_used: Instant,
}

struct UserLease {
    state: Mutex<LeaseState>,
    /// One lease request per user at a time on this instance: the calls
    /// that find the lease empty meanwhile wait for it instead of each
    /// asking Redis.
    refilling: tokio::sync::Mutex<()>,
}

pub struct RateLimiter {
    limit: Option<RateLimit>,
    redis: Arc<RedisStore>,
    max_lease: u32,
    users: RwLock<HashMap<Uuid, Arc<UserLease>>>,
}

fn secs_until(at: Instant, now: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(now).as_millis().div_ceil(1000)).unwrap_or(u64::MAX)
}

impl LeaseState {
    fn new(now: Instant) -> Self {
        Self {
            left: 0,
            granted: 0,
            granted_at: now,
            grant_end_us: 0,
            shared_remaining: 0,
            reset_at: now,
            refused_until: None,
            want: 1,
            last_used: now,
        }
    }

    /// Hands out one leased call, or repeats a refusal still in force;
    /// `None` when a new lease is needed.
    fn spend(&mut self, limit: RateLimit, now: Instant) -> Option<RateOutcome> {
        self.last_used = now;
        if let Some((until, retry_at)) = self.refused_until {
            if until > now {
                return Some(self.refused(limit, retry_at, now));
            }
            self.refused_until = None;
        }
        if self.left > 0 {
            self.left -= 1;
            return Some(RateOutcome {
                limit: limit.per_minute,
                allowed: true,
                remaining: self.left.saturating_add(self.shared_remaining),
                reset_secs: secs_until(self.reset_at, now),
                retry_after_secs: 0,
            });
        }
        None
    }

    fn refused(&self, limit: RateLimit, retry_at: Instant, now: Instant) -> RateOutcome {
        RateOutcome {
            limit: limit.per_minute,
            allowed: false,
            remaining: 0,
            reset_secs: secs_until(self.reset_at, now),
            retry_after_secs: secs_until(retry_at, now).max(1),
        }
    }

    /// Before asking for a new lease (this one is used up): how many to ask
    /// for.
    fn next_want(&mut self, max_lease: u32, now: Instant) -> u32 {
        if self.granted > 0 {
            self.want = if now.duration_since(self.granted_at) < LEASE_TARGET {
                self.granted.saturating_mul(2)
            } else {
                self.granted / 2
            }
            .clamp(1, max_lease);
        }
        self.want
    }

    /// Takes a grant; the call that asked for it spends the first call.
    fn take_grant(&mut self, limit: RateLimit, grant: LeaseGrant, now: Instant) -> RateOutcome {
        self.reset_at = now + grant.reset;
        self.shared_remaining = grant.remaining;
        if grant.granted == 0 {
            // Nothing leased: keep the last lease's size for when it fits.
            let retry_at = now + grant.retry_after.max(Duration::from_millis(1));
            self.refused_until = Some((retry_at.min(now + REFUSAL_MEMORY), retry_at));
            self.granted = 0;
            return self.refused(limit, retry_at, now);
        }
        self.granted = grant.granted;
        self.left = grant.granted;
        self.granted_at = now;
        self.grant_end_us = grant.end_us;
        self.spend(limit, now).unwrap_or(RateOutcome {
            limit: limit.per_minute,
            allowed: true,
            remaining: grant.remaining,
            reset_secs: secs_until(self.reset_at, now),
            retry_after_secs: 0,
        })
    }
}

impl RateLimiter {
    /// `limit` None (or 0 per minute): calls are not limited.
    pub fn new(limit: Option<RateLimit>, redis: Arc<RedisStore>) -> Self {
        let limit = limit.filter(|l| l.per_minute > 0);
        let max_lease = limit.map_or(1, |l| (l.burst / 8).clamp(1, LEASE_CAP));
        Self {
            limit,
            redis,
            max_lease,
            users: RwLock::new(HashMap::new()),
        }
    }

    fn lease_of(&self, user: Uuid) -> Arc<UserLease> {
        if let Some(lease) = self.users.read().unwrap_or_else(|e| e.into_inner()).get(&user) {
            return lease.clone();
        }
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user)
            .or_insert_with(|| {
                Arc::new(UserLease {
                    state: Mutex::new(LeaseState::new(Instant::now())),
                    refilling: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// One call's step: `None` when calls are not limited, or Redis cannot
    /// be asked for a lease (rate limits fail open).
    pub async fn take(&self, user: Uuid) -> Option<RateOutcome> {
        let limit = self.limit?;
        let lease = self.lease_of(user);
        let spend = |lease: &UserLease| {
            lease
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spend(limit, Instant::now())
        };
        if let Some(outcome) = spend(&lease) {
            return Some(outcome);
        }
        let _one_request = lease.refilling.lock().await;
        // Whoever held the lock before may have just leased.
        if let Some(outcome) = spend(&lease) {
            return Some(outcome);
        }
        let want = lease
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_want(self.max_lease, Instant::now());
        let grant = self.redis.lease_calls(user, limit, want).await?;
        let outcome = lease
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_grant(limit, grant, Instant::now());
        Some(outcome)
    }

    /// Gives back the unused calls of users idle here for
    /// [`GIVE_BACK_IDLE`] (every lease's when `everything`, at shutdown),
    /// and forgets idle users.
    pub async fn sweep(&self, everything: bool) {
        let Some(limit) = self.limit else { return };
        let now = Instant::now();
        let mut returns = Vec::new();
        let mut idle = Vec::new();
        // Under the read lock: calls looking up their lease are not held up.
        for (user, lease) in self.users.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.left > 0 && (everything || now.duration_since(state.last_used) >= GIVE_BACK_IDLE) {
                returns.push((*user, std::mem::take(&mut state.left), state.grant_end_us));
            }
            let refused = state.refused_until.is_some_and(|(until, _)| until > now);
            if !refused && now.duration_since(state.last_used) >= FORGET_IDLE && state.left == 0 {
                idle.push(*user);
            }
        }
        if !idle.is_empty() {
            let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
            for user in idle {
                // A call may have picked it up again since.
                let still_idle = users.get(&user).is_some_and(|lease| {
                    let state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.left == 0 && now.duration_since(state.last_used) >= FORGET_IDLE
                });
                if still_idle {
                    users.remove(&user);
                }
            }
        }
        for (user, calls, end_us) in returns {
            self.redis.return_calls(user, limit, calls, end_us).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_minute: 600,
        burst: 600,
    };

    fn grant(granted: u32, remaining: u32) -> LeaseGrant {
        LeaseGrant {
            granted,
            remaining,
            retry_after: Duration::from_millis(100),
            reset: Duration::from_secs(1),
            end_us: 0,
        }
    }

    #[test]
    fn a_lease_is_spent_call_by_call_and_grows_while_used_up_quickly() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        assert_eq!(state.spend(LIMIT, now), None, "no lease yet");
        assert_eq!(state.next_want(75, now), 1, "the first lease is one call");
        let first = state.take_grant(LIMIT, grant(1, 599), now);
        assert!(first.allowed);
        assert_eq!(first.remaining, 599);
        assert_eq!(state.spend(LIMIT, now), None, "used up");
        assert_eq!(state.next_want(75, now), 2, "used up quickly: doubled");
        state.take_grant(LIMIT, grant(2, 597), now);
        let second = state.spend(LIMIT, now);
        assert_eq!(second.map(|o| (o.allowed, o.remaining)), Some((true, 597)));
        for _ in 0..10 {
            let want = state.next_want(75, now);
            state.take_grant(LIMIT, grant(want, 0), now);
            state.left = 0;
        }
        assert_eq!(state.next_want(75, now), 75, "capped");
    }

    #[test]
    fn a_lease_used_slowly_is_kept_and_the_next_is_smaller() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        state.want = 8;
        state.take_grant(LIMIT, grant(8, 100), now);
        let later = now + LEASE_TARGET * 3;
        for _ in 0..7 {
            assert_eq!(
                state.spend(LIMIT, later).map(|o| o.allowed),
                Some(true),
                "kept while used"
            );
        }
        assert_eq!(state.spend(LIMIT, later), None);
        assert_eq!(state.next_want(75, later), 4, "lasted longer than the target: halved");
    }

    #[test]
    fn a_refusal_is_remembered_until_a_call_would_fit() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        let refused = state.take_grant(LIMIT, grant(0, 0), now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        let again = state.spend(LIMIT, now + Duration::from_millis(50));
        assert_eq!(again.map(|o| o.allowed), Some(false), "refused from memory");
        assert_eq!(
            state.spend(LIMIT, now + Duration::from_millis(150)),
            None,
            "then ask again"
        );
    }
}
