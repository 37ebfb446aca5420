//! What every instance must hear about at once, kept in memory so a call
//! never waits on Redis for it: logged-out sessions and access tokens
//! (the deny-list), users whose role, status or dues changed, and revoked
//! API keys.
//!
//! The changes arrive by Redis pub/sub (`jobs::spawn_revocation_listener`
//! feeds [`Revocations::apply`]). Pub/sub delivers only to whoever is
//! listening, so after every (re)subscription the listener reloads the
//! deny-list from its sorted set and marks every cached standing for a
//! re-read ([`Revocations::resynced`]) before memory is trusted again.
//! While the listener cannot hear Redis (no message or pong for
//! [`HEARING_BOUND`]), memory may be missing a change: [`Revocations::hearing`]
//! turns false, and the callers apply their policy (metered calls go on with
//! what memory holds; every other route refuses access tokens with 503).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

pub use crate::redis_store::{DeniedId, Event};

/// How long memory is trusted without hearing from Redis. The listener pings
/// every [`PING_EVERY`], so a live connection is heard from well within it;
/// two missed pongs and a bit mean the connection is gone or Redis stalls.
pub const HEARING_BOUND: Duration = Duration::from_secs(2);

/// How often the listener pings Redis on its subscription.
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// A user's standing as cached: which change it has seen (see
/// [`Revocations::read_mark`]) and when the database said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMark {
    sequence: u64,
    resync: u64,
}

pub struct Revocations {
    /// Denied sessions and tokens → Unix ms until which they are refused.
    denied: RwLock<HashMap<DeniedId, i64>>,
    /// Counts user changes heard; [`Self::last_change`] notes each user's.
    sequence: AtomicU64,
    last_change: RwLock<HashMap<Uuid, (u64, Instant)>>,
    /// Bumped at each resync: standings read before it are re-read when
    /// the database can answer (and still trusted when it cannot).
    resync: AtomicU64,
    /// Since `started`, in ms, when the listener last heard Redis.
    heard_at_ms: AtomicU64,
    /// Whether memory holds the deny-list as of the current subscription.
    synced: AtomicBool,
    started: Instant,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        Self {
            denied: RwLock::new(HashMap::new()),
            sequence: AtomicU64::new(0),
            last_change: RwLock::new(HashMap::new()),
            resync: AtomicU64::new(0),
            heard_at_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether memory can be trusted to hold every change: subscribed,
    /// resynced since, and heard from within [`HEARING_BOUND`].
    pub fn hearing(&self) -> bool {
        let bound = u64::try_from(HEARING_BOUND.as_millis()).unwrap_or(u64::MAX);
        self.synced.load(Ordering::Acquire)
            && self
                .elapsed_ms()
                .saturating_sub(self.heard_at_ms.load(Ordering::Relaxed))
                <= bound
    }

    /// The listener heard Redis (a message or a pong).
    pub fn heard(&self) {
        self.heard_at_ms.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// The subscription is gone: until the next resync, memory may miss
    /// changes.
    pub fn lost(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// After (re)subscribing: `denied` is the whole deny-list read after the
    /// subscription started, so nothing published since is missed. Every
    /// cached standing is re-read on its next use (changes published while
    /// nobody listened are lost to pub/sub, but not to the database).
    ///
    /// Returns the entries memory held that Redis did not: Redis keeps
    /// nothing on disk, so after its restart the deny-list lives on only in
    /// the instances' memory, and the listener writes them back.
    pub fn resynced(&self, denied: impl IntoIterator<Item = (DeniedId, i64)>) -> Vec<(DeniedId, i64)> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let missing = {
            let mut map = self.denied.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, until| *until > now_ms);
            let mut missing = map.clone();
            for (id, until) in denied {
                missing.remove(&id);
                let kept = map.entry(id).or_insert(until);
                *kept = (*kept).max(until);
            }
            missing.into_iter().collect()
        };
        self.resync.fetch_add(1, Ordering::AcqRel);
        self.heard();
        self.synced.store(true, Ordering::Release);
        missing
    }

    /// Applies one change heard (or made) by this instance. Key revocations
    /// are the key cache's: the caller handles [`Event::KeyRevoked`].
    pub fn apply(&self, event: &Event) {
        match event {
            Event::SessionDenied { session, until_ms } => self.deny(DeniedId::Session(*session), *until_ms),
            Event::TokenDenied { jti, until_ms } => self.deny(DeniedId::Token(*jti), *until_ms),
            Event::UserChanged { user } => {
                let sequence = self.sequence.fetch_add(1, Ordering::AcqRel) + 1;
                self.last_change
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*user, (sequence, Instant::now()));
            }
            Event::KeyRevoked { .. } | Event::Other => {}
        }
    }

    fn deny(&self, id: DeniedId, until_ms: i64) {
        let mut denied = self.denied.write().unwrap_or_else(|e| e.into_inner());
        let until = denied.entry(id).or_insert(until_ms);
        *until = (*until).max(until_ms);
    }

    /// Whether the token or its session was logged out.
    pub fn is_denied(&self, jti: Uuid, session: Option<Uuid>) -> bool {
        let denied = self.denied.read().unwrap_or_else(|e| e.into_inner());
        if denied.is_empty() {
            return false;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let refused = |id: DeniedId| denied.get(&id).is_some_and(|until| *until > now_ms);
        refused(DeniedId::Token(jti)) || session.is_some_and(|s| refused(DeniedId::Session(s)))
    }

    /// Taken before a standing is read from the database: the standing may
    /// be cached with it, and is current while [`Self::still_current`].
    pub fn read_mark(&self) -> ReadMark {
        ReadMark {
            sequence: self.sequence.load(Ordering::Acquire),
            resync: self.resync.load(Ordering::Acquire),
        }
    }

    /// No change to `user` was heard since `mark`. A standing for which
    /// this is false must not be used even when the database is down.
    pub fn unchanged_since(&self, user: Uuid, mark: ReadMark) -> bool {
        self.last_change
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&user)
            .is_none_or(|(sequence, _)| *sequence <= mark.sequence)
    }

    /// Unchanged, and read since the last resync: fit to use without asking
    /// the database again (within the standing's TTL).
    pub fn still_current(&self, user: Uuid, mark: ReadMark) -> bool {
        mark.resync == self.resync.load(Ordering::Acquire) && self.unchanged_since(user, mark)
    }

    /// Drops what can no longer matter: expired deny-list entries, and user
    /// changes older than any read still in flight could be (`keep`).
    pub fn prune(&self, keep: Duration) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.denied
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now_ms);
        // A change forgotten here reads as "unchanged" to a standing read
        // before it; the standing cache forgets such standings first (its
        // entries live at most `keep`).
        self.last_change
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, at)| at.elapsed() < keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_tokens_and_sessions_are_refused_until_their_expiry() {
        let revocations = Revocations::new();
        let (jti, session, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let later = chrono::Utc::now().timestamp_millis() + 60_000;
        revocations.apply(&Event::SessionDenied {
            session,
            until_ms: later,
        });
        assert!(revocations.is_denied(other, Some(session)), "any token of the session");
        assert!(!revocations.is_denied(other, None));
        revocations.apply(&Event::TokenDenied { jti, until_ms: 1 });
        assert!(!revocations.is_denied(jti, None), "expired entries refuse nothing");
        let missing = revocations.resynced([(DeniedId::Token(jti), later)]);
        assert!(revocations.is_denied(jti, None), "a resync brings what was missed");
        assert_eq!(
            missing,
            [(DeniedId::Session(session), later)],
            "and tells what Redis lost (a restart) for it to be written back"
        );
        revocations.prune(Duration::from_secs(60));
        assert!(revocations.is_denied(jti, None));
    }

    #[test]
    fn a_standing_read_before_a_change_or_a_resync_is_not_current() {
        let revocations = Revocations::new();
        let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mark = revocations.read_mark();
        revocations.apply(&Event::UserChanged { user });
        assert!(!revocations.unchanged_since(user, mark));
        assert!(revocations.unchanged_since(other, mark));
        assert!(revocations.still_current(other, mark));
        revocations.resynced([]);
        assert!(!revocations.still_current(other, mark), "re-read after a resync");
        assert!(revocations.unchanged_since(other, mark), "but no change is known");
        let fresh = revocations.read_mark();
        assert!(revocations.still_current(user, fresh));
    }

    #[test]
    fn memory_is_trusted_only_while_synced_and_heard() {
        let revocations = Revocations::new();
        assert!(!revocations.hearing(), "not before the first sync");
        revocations.resynced([]);
        assert!(revocations.hearing());
        revocations.lost();
        assert!(!revocations.hearing());
    }
}
