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
//!   [`RateLimiter::max_lease`] calls per other instance sit unused in their
//!   memory. An unused lease goes back to the budget when it expires
//!   ([`LEASE_TTL`], checked every [`SWEEP_EVERY`] by `jobs`), so the
//!   early refusal lasts at most that long.
//! - **Leases follow demand.** A user's first call leases one; each lease
//!   used up before it expires doubles the next (up to the cap), and one
//!   that expires half-used shrinks to what was used. A busy user costs one
//!   Redis command per hundreds of calls; a quiet one about one per call.
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

/// How long a lease may be spent before its unused calls go back.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// How often expired leases are given back and idle users forgotten.
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
    /// How many the current lease granted.
    granted: u32,
    expires: Instant,
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
            expires: now,
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
        if self.left > 0 && self.expires > now {
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

    /// Before asking for a new lease: the calls to give back (an expired
    /// lease's unused ones) and how many to ask for.
    fn renew(&mut self, max_lease: u32, now: Instant) -> (u32, u32) {
        let unused = std::mem::take(&mut self.left);
        if self.granted > 0 {
            let used = self.granted - unused;
            self.want = if unused == 0 && self.expires > now {
                // Used up before it expired: demand outgrows the lease.
                self.granted.saturating_mul(2)
            } else {
                used.max(1)
            }
            .clamp(1, max_lease);
        }
        (unused, self.want)
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
        self.expires = now + LEASE_TTL;
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

    /// The most calls one instance leases at once (the early-refusal bound).
    pub fn max_lease(&self) -> u32 {
        self.max_lease
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
        let (unused, want) = lease
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renew(self.max_lease, Instant::now());
        if unused > 0 {
            self.give_back(user, limit, unused);
        }
        let grant = self.redis.lease_calls(user, limit, want).await?;
        let outcome = lease
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_grant(limit, grant, Instant::now());
        Some(outcome)
    }

    /// Returns unused calls to the shared budget off the request path.
    fn give_back(&self, user: Uuid, limit: RateLimit, calls: u32) {
        let redis = self.redis.clone();
        tokio::spawn(async move {
            redis.return_calls(user, limit, calls).await;
        });
    }

    /// Gives back the unused calls of expired leases (all leases when
    /// `everything`, at shutdown) and forgets idle users.
    pub async fn sweep(&self, everything: bool) {
        let Some(limit) = self.limit else { return };
        let now = Instant::now();
        let mut returns = Vec::new();
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|user, lease| {
                let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.left > 0 && (everything || state.expires <= now) {
                    returns.push((*user, std::mem::take(&mut state.left)));
                }
                let refused = state.refused_until.is_some_and(|(until, _)| until > now);
                refused || now.duration_since(state.last_used) < FORGET_IDLE || state.left > 0
            });
        for (user, calls) in returns {
            self.redis.return_calls(user, limit, calls).await;
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
        }
    }

    #[test]
    fn a_lease_is_spent_call_by_call_and_then_renewed_larger() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        assert_eq!(state.spend(LIMIT, now), None, "no lease yet");
        assert_eq!(state.renew(75, now), (0, 1), "the first lease is one call");
        let first = state.take_grant(LIMIT, grant(1, 599), now);
        assert!(first.allowed);
        assert_eq!(first.remaining, 599);
        assert_eq!(state.spend(LIMIT, now), None, "used up");
        assert_eq!(state.renew(75, now), (0, 2), "used up before expiry: doubled");
        state.take_grant(LIMIT, grant(2, 597), now);
        let second = state.spend(LIMIT, now);
        assert_eq!(second.map(|o| (o.allowed, o.remaining)), Some((true, 597)));
        for _ in 0..10 {
            state.renew(75, now);
            state.granted = state.want;
            state.left = 0;
            state.expires = now + LEASE_TTL;
        }
        assert_eq!(state.renew(75, now).1, 75, "capped");
    }

    #[test]
    fn an_expired_lease_gives_back_what_was_unused_and_shrinks() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        state.want = 8;
        state.take_grant(LIMIT, grant(8, 100), now);
        state.spend(LIMIT, now);
        let later = now + LEASE_TTL + Duration::from_millis(1);
        assert_eq!(state.spend(LIMIT, later), None, "expired leases hand nothing out");
        assert_eq!(
            state.renew(75, later),
            (6, 2),
            "6 unused go back; ask for what was used"
        );
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
