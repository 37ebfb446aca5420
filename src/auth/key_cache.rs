//! API key hash → owner, without a database round trip per call.
//!
//! A plain TTL cache is not enough here: with many active keys each one
//! expires every TTL, the call that finds it expired waits for the database,
//! and on a loaded instance the calls arriving meanwhile miss too (measured:
//! with 1,000 keys half the calls went to the database). Instead one
//! background task re-confirms every recently used key in a single query
//! ([`KeyCache::revalidate`], every [`REVALIDATE_EVERY`]); calls only read.
//! An entry not confirmed for `max_age` is not trusted whatever happens to
//! that task, which is what bounds how long a revoked key keeps working on
//! another instance when the revocation's push is lost (it normally arrives
//! at once: `Authenticator::key_revoked`). While the database cannot answer,
//! a key confirmed within the stale-if-error window keeps working
//! ([`KeyCache::stale`]); "no such key" never does.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How often the background task re-confirms the cached keys.
pub const REVALIDATE_EVERY: Duration = Duration::from_millis(250);

/// A key unused for this many rounds (≈ 10 s) is dropped from the cache,
/// unless the stale-if-error window is longer: a key used within it must
/// still be there if the database goes down.
const MIN_IDLE_ROUNDS: u32 = 40;

/// (key id, user id) of an active key; `None` caches "no such active key".
pub type KeyLookup = Option<(Uuid, Uuid)>;

struct Entry {
    found: KeyLookup,
    /// When the database last said this (the start of that query).
    confirmed_at: Instant,
    /// Revalidation rounds since a call last used it.
    idle_rounds: AtomicU32,
}

pub struct KeyCache {
    max_age: Duration,
    stale_if_error: Duration,
    idle_rounds: u32,
    entries: RwLock<HashMap<String, Entry>>,
    /// Keys seen revoked (by push or by a revalidation), for the stale
    /// window: a lookup that started before the revocation and ends after
    /// it must not put the key back. A key is never un-revoked.
    revoked: RwLock<HashMap<String, Instant>>,
}

impl KeyCache {
    /// A zero `max_age` makes every call ask the database (entries are then
    /// kept only for the stale-if-error window).
    pub fn new(max_age: Duration, stale_if_error: Duration) -> Self {
        let window_rounds = stale_if_error.as_millis().div_ceil(REVALIDATE_EVERY.as_millis());
        Self {
            max_age,
            stale_if_error,
            idle_rounds: u32::try_from(window_rounds).unwrap_or(u32::MAX).max(MIN_IDLE_ROUNDS),
            entries: RwLock::new(HashMap::new()),
            revoked: RwLock::new(HashMap::new()),
        }
    }

    /// The cached lookup, if confirmed recently enough to trust.
    pub fn get(&self, hash: &str) -> Option<KeyLookup> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(hash)?;
        if entry.confirmed_at.elapsed() >= self.max_age {
            return None;
        }
        // Read before writing: most calls find it at 0 already, and a load
        // does not bounce the cache line between cores.
        if entry.idle_rounds.load(Ordering::Relaxed) != 0 {
            entry.idle_rounds.store(0, Ordering::Relaxed);
        }
        Some(entry.found)
    }

    /// For when the database cannot answer: the key's owner if it was
    /// confirmed active within the stale-if-error window.
    pub fn stale(&self, hash: &str) -> Option<(Uuid, Uuid)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(hash)?;
        if entry.confirmed_at.elapsed() >= self.stale_if_error {
            return None;
        }
        entry.idle_rounds.store(0, Ordering::Relaxed);
        entry.found
    }

    /// Stores what the database said in a query that started at `asked_at`.
    pub fn put(&self, hash: String, found: KeyLookup, asked_at: Instant) {
        if self.max_age.is_zero() && self.stale_if_error.is_zero() {
            return;
        }
        let entry = Entry {
            found,
            confirmed_at: asked_at,
            idle_rounds: AtomicU32::new(0),
        };
        // Locks in the order `remove` takes them (entries, then revoked), so
        // a revocation cannot slip between the check and the insert.
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if found.is_some()
            && self
                .revoked
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&hash)
        {
            return;
        }
        entries.insert(hash, entry);
    }

    /// The key was revoked: forgotten, and never put back.
    pub fn remove(&self, hash: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.remove(hash);
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), Instant::now());
    }

    /// Starts a revalidation round: drops idle and untrusted entries and
    /// returns the hashes of the active keys to confirm.
    pub fn to_revalidate(&self) -> Vec<String> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| {
            let idle = e.idle_rounds.fetch_add(1, Ordering::Relaxed) >= self.idle_rounds;
            // "No such key" is never re-confirmed (a new key has a new hash);
            // it simply ages out.
            let keep_unknown = e.found.is_some() || e.confirmed_at.elapsed() < self.max_age;
            !idle && keep_unknown
        });
        // A revocation matters as long as a lookup started before it could
        // still finish, or a stale entry from before it be served.
        let remember = self.stale_if_error.max(self.max_age) + Duration::from_secs(60);
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| at.elapsed() < remember);
        entries
            .iter()
            .filter(|(_, e)| e.found.is_some())
            .map(|(hash, _)| hash.clone())
            .collect()
    }

    /// Ends a round: of the `asked` hashes, those in `still_active` are
    /// confirmed as of `asked_at`; the others were revoked and are dropped.
    pub fn confirm(&self, asked: &[String], still_active: &[String], asked_at: Instant) {
        let active: std::collections::HashSet<&str> = still_active.iter().map(String::as_str).collect();
        let mut revoked = Vec::new();
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for hash in asked {
            if active.contains(hash.as_str()) {
                // Only move forward: a call may have re-read it since.
                if let Some(e) = entries.get_mut(hash)
                    && e.confirmed_at < asked_at
                {
                    e.confirmed_at = asked_at;
                }
            } else {
                entries.remove(hash);
                revoked.push(hash);
            }
        }
        let now = Instant::now();
        let mut seen = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        for hash in revoked {
            seen.insert(hash.clone(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> KeyLookup {
        Some((Uuid::new_v4(), Uuid::new_v4()))
    }

    #[test]
    fn entries_are_trusted_for_max_age_from_the_query_start() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(1));
        let found = owner();
        cache.put("a".into(), found, Instant::now());
        assert_eq!(cache.get("a"), Some(found));
        let Some(old) = Instant::now().checked_sub(Duration::from_secs(61)) else {
            panic!("the monotonic clock starts later than a minute before now")
        };
        cache.put("old".into(), found, old);
        assert_eq!(cache.get("old"), None);
    }

    #[test]
    fn a_round_confirms_active_keys_and_drops_revoked_ones() {
        // Instants in the past instead of sleeps: every assertion runs on
        // every machine, however loaded (a 60 s trust leaves no race).
        let max_age = Duration::from_secs(60);
        let cache = KeyCache::new(max_age, Duration::from_secs(1));
        let (a, b) = (owner(), owner());
        let Some(expired) = Instant::now().checked_sub(max_age + Duration::from_secs(1)) else {
            panic!("the monotonic clock starts later than a minute before now")
        };
        cache.put("a".into(), a, expired);
        cache.put("b".into(), b, expired);
        cache.put("unknown".into(), None, expired);
        assert_eq!(cache.get("a"), None, "not confirmed for max_age: not trusted");
        let mut asked = cache.to_revalidate();
        asked.sort();
        assert_eq!(asked, ["a", "b"], "unknown keys are not re-confirmed");
        cache.confirm(&asked, &["a".to_owned()], Instant::now());
        assert_eq!(cache.get("a"), Some(a), "trusted again from the confirmation");
        assert_eq!(cache.get("b"), None, "revoked: dropped");
        assert_eq!(cache.get("unknown"), None, "aged out");
        assert_eq!(
            cache.to_revalidate(),
            ["a"],
            "the revoked key is gone, not just untrusted"
        );
        // A confirmation never moves an entry back in time.
        cache.confirm(&["a".to_owned()], &["a".to_owned()], expired);
        assert_eq!(cache.get("a"), Some(a));
    }

    #[test]
    fn idle_keys_leave_and_a_zero_max_age_stores_nothing() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_secs(1));
        cache.put("used".into(), owner(), Instant::now());
        cache.put("idle".into(), owner(), Instant::now());
        for _ in 0..=MIN_IDLE_ROUNDS {
            assert!(cache.get("used").is_some());
            cache.to_revalidate();
        }
        assert_eq!(cache.to_revalidate(), ["used"]);

        let off = KeyCache::new(Duration::ZERO, Duration::ZERO);
        off.put("a".into(), owner(), Instant::now());
        assert_eq!(off.get("a"), None);
    }

    #[test]
    fn while_the_database_is_down_known_keys_confirmed_in_the_window_still_work() {
        let cache = KeyCache::new(Duration::ZERO, Duration::from_secs(60));
        let found = owner();
        cache.put("known".into(), found, Instant::now());
        cache.put("unknown".into(), None, Instant::now());
        assert_eq!(cache.get("known"), None, "a zero max_age: always asked");
        assert_eq!(cache.stale("known"), found);
        assert_eq!(cache.stale("unknown"), None, "nothing new is trusted");
        assert_eq!(cache.stale("never-seen"), None);
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(61)) else {
            panic!("the monotonic clock starts later than a minute before now")
        };
        cache.put("old".into(), found, long_ago);
        assert_eq!(cache.stale("old"), None, "past the window");
        cache.remove("known");
        assert_eq!(cache.stale("known"), None, "revoked: gone");
        // A lookup that started before the revocation finishes after it.
        cache.put("known".into(), found, Instant::now());
        assert_eq!(cache.stale("known"), None, "never put back");
    }
}
