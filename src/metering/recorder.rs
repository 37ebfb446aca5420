//! The in-memory side of batched metering: per-thread shards of pending
//! counter deltas. Each actix worker is one thread and gets its own shard,
//! so recording a call takes an uncontended lock; only the flusher's
//! drain (a pointer swap per shard) ever meets it.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crate::models::usage::{UsageDelta, UsageKey};

const SHARDS: usize = 32;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = Cell::new(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
}

pub struct Recorder {
    shards: Vec<Mutex<HashMap<UsageKey, UsageDelta>>>,
    /// Calls recorded in shards and not yet handed to a flush.
    buffered_calls: AtomicI64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            buffered_calls: AtomicI64::new(0),
        }
    }
}

impl Recorder {
    pub fn record(&self, key: UsageKey, delta: UsageDelta) {
        let shard = SHARD.with(Cell::get);
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().add(delta);
        drop(map);
        self.buffered_calls.fetch_add(delta.calls, Ordering::Relaxed);
    }

    /// Takes everything recorded so far, merged by key and sorted (the order
    /// every flush writes rows in).
    pub fn drain(&self) -> Vec<(UsageKey, UsageDelta)> {
        let mut merged: HashMap<UsageKey, UsageDelta> = HashMap::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            if merged.is_empty() {
                merged = taken;
            } else {
                for (k, d) in taken {
                    merged.entry(k).or_default().add(d);
                }
            }
        }
        let mut rows: Vec<_> = merged.into_iter().collect();
        rows.sort_unstable_by_key(|(k, _)| *k);
        let calls: i64 = rows.iter().map(|(_, d)| d.calls).sum();
        self.buffered_calls.fetch_sub(calls, Ordering::Relaxed);
        rows
    }

    /// Approximate while calls are being recorded (a drain can run between
    /// a record's insert and its count), exact when quiet.
    pub fn buffered_calls(&self) -> u64 {
        self.buffered_calls.load(Ordering::Relaxed).max(0).unsigned_abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Day;
    use std::sync::Arc;
    use uuid::Uuid;

    #[test]
    fn concurrent_records_are_all_drained_exactly_once() {
        let recorder = Arc::new(Recorder::default());
        let day: Day = "2026-11-30".parse().unwrap();
        let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let recorder = recorder.clone();
                let users = users.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let key = UsageKey {
                            user_id: users[i % 3],
                            api_id: (t % 2) + 1,
                            day,
                            second: 1_764_460_800,
                        };
                        recorder.record(key, UsageDelta::one(i % 10 == 0));
                    }
                })
            })
            .collect();
        let mut drained = Vec::new();
        while threads.iter().any(|t| !t.is_finished()) {
            drained.extend(recorder.drain());
        }
        for t in threads {
            t.join().unwrap();
        }
        drained.extend(recorder.drain());
        let calls: i64 = drained.iter().map(|(_, d)| d.calls).sum();
        let failed: i64 = drained.iter().map(|(_, d)| d.failed_calls).sum();
        assert_eq!(calls, 80_000);
        assert_eq!(failed, 8_000);
        assert_eq!(recorder.buffered_calls(), 0);
    }
}
