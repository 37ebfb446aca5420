//! Metering: every authenticated call to a catalog API is counted per user,
//! per API, per period, and per day beside it.
//!
//! - [`middleware`]: the actix middleware on the metered scope (authenticate,
//!   resolve the API, call the handler, record the outcome).
//! - [`catalog`]: method + route pattern (or gateway prefix) → API, in memory.
//! - [`rate_limit`]: per-user rate limits leased from Redis in batches.
//! - [`spend`]: spending caps — budget leased from PostgreSQL, reserved per call.
//! - [`recorder`]: in-memory pending deltas (batched mode).
//! - [`group`]: the calls waiting for the next group commit (durable mode).
//! - [`Meter`] (here): the mode switch; the flush that moves pending
//!   deltas into `usage_records`, `usage_prices` and `usage_daily` with one
//!   atomic multi-row upsert each, in one transaction (`billing::usage_cost`),
//!   which `jobs` runs on a timer; and the group
//!   commit that `jobs` runs whenever durable calls are waiting.

pub mod catalog;
pub mod group;
pub mod middleware;
pub mod rate_limit;
pub mod recorder;
pub mod spend;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::billing::usage_cost::{self, BatchOutcome, Settlement};
use crate::config::MeterMode;
use crate::db::{DbConn, DbPool};
use crate::domain::Currency;
use crate::models::usage::{FlushId, UsageDelta, UsageKey, UsageRecord};
use crate::telemetry::Metrics;

pub use catalog::Catalog;
use group::{GroupOutcome, Groups};
pub use middleware::metered_call;
pub use recorder::Recorder;

/// How long a durable group is retried (with the same flush id) before its
/// calls are answered 503. Long enough to ride out a dropped connection or a
/// database failover's first seconds, short enough that a client waiting on
/// an outage hears about it.
const GROUP_RETRY_FOR: Duration = Duration::from_secs(2);

/// The name of the catch-all resource that serves gateway APIs (registered
/// after every route payg serves itself, wrapped in [`metered_call`]).
pub const GATEWAY_RESOURCE: &str = "payg-gateway";

/// What the metering middleware needs, registered as app data of its own
/// (built once in `app.rs`), so metering does not depend on `AppState`.
pub struct Metering {
    pub catalog: Arc<Catalog>,
    pub meter: Arc<Meter>,
    pub authenticator: Arc<crate::auth::Authenticator>,
    /// Per-user limits, leased from Redis.
    pub rate_limits: Arc<rate_limit::RateLimiter>,
    /// Spending caps, leased from PostgreSQL.
    pub spend: Arc<spend::SpendLimiter>,
    pub clock: Arc<dyn crate::domain::Clock>,
    pub billing_tz: chrono_tz::Tz,
    /// `payg_rate_limit_refusals_total`.
    pub rate_limit_refusals: prometheus::IntCounter,
    /// `payg_spending_refusals_total{code}`.
    pub spending_refusals: prometheus::IntCounterVec,
}

/// A drained batch waiting to be written, with the id it keeps across retries.
struct PendingFlush {
    id: Uuid,
    rows: Vec<(UsageKey, UsageDelta)>,
    calls: u64,
}

/// A durable group whose calls were answered 503: kept until its settlement
/// commits, so those calls end up counted as failed whatever became of the
/// group's own commit.
#[derive(Clone)]
struct GivenUp {
    original: FlushId,
    /// Fixed when the group is given up, so a retried settlement is applied once.
    settlement: FlushId,
    rows: Vec<(UsageKey, UsageDelta)>,
    calls: u64,
}

/// A durable call whose count could not be committed: it must not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotMetered;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushResult {
    Nothing,
    Flushed { rows: usize, calls: u64 },
}

/// A snapshot of the meter for operators (in `GET /readyz`).
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct MeterStatus {
    /// `batched`, `durable` or `off`.
    #[schema(value_type = String)]
    pub mode: &'static str,
    /// Calls counted in memory and not yet committed to PostgreSQL (durable:
    /// calls waiting for their group, and calls answered 503 whose
    /// settlement has not committed yet).
    pub pending_calls: u64,
    /// Batches (durable: groups) committed since start.
    pub flushes: u64,
    pub flush_failures: u64,
}

pub struct Meter {
    mode: MeterMode,
    currency: Currency,
    db: DbPool,
    instance_id: Uuid,
    recorder: Recorder,
    /// Held for a whole flush attempt: one flush at a time per instance.
    in_flight: Mutex<Option<PendingFlush>>,
    in_flight_calls: AtomicU64,
    flushes: AtomicU64,
    flush_failures: AtomicU64,
    metrics: Arc<Metrics>,
    /// Durable mode: the calls waiting for the next group commit.
    groups: Groups,
    /// Durable mode: held for a whole group commit (one group in flight per
    /// instance), with the connection the groups are written on. Kept
    /// between groups, so a commit never queues behind calls for the pool.
    group_conn: Mutex<Option<DbConn>>,
    /// Durable mode: given-up groups waiting for their settlement, oldest first.
    given_up: std::sync::Mutex<VecDeque<GivenUp>>,
    given_up_calls: AtomicU64,
    /// Held for a whole settlement attempt: one at a time.
    settling: Mutex<()>,
}

impl Meter {
    pub fn new(mode: MeterMode, currency: Currency, db: DbPool, metrics: Arc<Metrics>) -> Self {
        if mode == MeterMode::Off {
            tracing::warn!("PAYG_METER_MODE=off: calls are authenticated but NOT METERED; use only for benchmarks");
        }
        Self {
            mode,
            currency,
            db,
            instance_id: Uuid::new_v4(),
            recorder: Recorder::default(),
            in_flight: Mutex::new(None),
            in_flight_calls: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_failures: AtomicU64::new(0),
            metrics,
            groups: Groups::default(),
            group_conn: Mutex::new(None),
            given_up: std::sync::Mutex::new(VecDeque::new()),
            given_up_calls: AtomicU64::new(0),
            settling: Mutex::new(()),
        }
    }

    pub fn mode(&self) -> MeterMode {
        self.mode
    }

    /// The id this instance's flushes carry (and its spending leases).
    pub fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    /// Batched mode: count the call in memory. Never awaits.
    pub fn record(&self, key: UsageKey, delta: UsageDelta) {
        self.recorder.record(key, delta);
    }

    /// Durable mode: joins the next group commit and returns once it has
    /// committed. `Err` means the call must not be served: its group could
    /// not be committed in time, and it will be settled as a failed call.
    pub async fn record_durable(&self, key: UsageKey, delta: UsageDelta) -> Result<(), NotMetered> {
        match self.groups.join(key, delta).await {
            GroupOutcome::Committed => Ok(()),
            GroupOutcome::GivenUp => Err(NotMetered),
        }
    }

    pub fn status(&self) -> MeterStatus {
        MeterStatus {
            mode: match self.mode {
                MeterMode::Batched => "batched",
                MeterMode::Durable => "durable",
                MeterMode::Off => "off",
            },
            pending_calls: self.recorder.buffered_calls()
                + self.in_flight_calls.load(Ordering::Relaxed)
                + self.groups.waiting_calls()
                + self.given_up_calls.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_failures: self.flush_failures.load(Ordering::Relaxed),
        }
    }

    /// One flush attempt. A batch that fails stays in flight with its id and
    /// is retried by the next attempt before anything newer is drained, so a
    /// batch is never dropped and (thanks to the id) never applied twice.
    /// In durable mode (nothing is batched) it settles a given-up group.
    pub async fn flush(&self) -> anyhow::Result<FlushResult> {
        if self.mode == MeterMode::Durable {
            return self.settle_given_up().await;
        }
        let mut in_flight = self.in_flight.lock().await;
        if in_flight.is_none() {
            let rows = self.recorder.drain();
            if rows.is_empty() {
                return Ok(FlushResult::Nothing);
            }
            let calls: u64 = rows.iter().map(|(_, d)| d.calls.unsigned_abs()).sum();
            self.in_flight_calls.store(calls, Ordering::Relaxed);
            *in_flight = Some(PendingFlush {
                id: Uuid::new_v4(),
                rows,
                calls,
            });
        }
        let Some(batch) = in_flight.as_ref() else {
            return Ok(FlushResult::Nothing);
        };
        let flush_id = FlushId {
            id: batch.id,
            instance_id: self.instance_id,
        };
        let attempt = async {
            let mut conn = self.db.get().await?;
            anyhow::Ok(usage_cost::apply(&mut conn, Some(flush_id), &batch.rows, self.currency).await?)
        };
        let timer = self.metrics.meter_flush_duration.start_timer();
        let result = attempt.await;
        timer.observe_duration();
        match result {
            Ok(outcome) => {
                if outcome == BatchOutcome::AlreadyApplied {
                    tracing::info!(flush_id = %batch.id, "flush had already committed; not applied again");
                }
                let result = FlushResult::Flushed {
                    rows: batch.rows.len(),
                    calls: batch.calls,
                };
                *in_flight = None;
                self.in_flight_calls.store(0, Ordering::Relaxed);
                self.flushes.fetch_add(1, Ordering::Relaxed);
                self.metrics.meter_flushes.inc();
                Ok(result)
            }
            Err(e) => {
                self.flush_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.meter_flush_failures.inc();
                tracing::warn!(
                    flush_id = %batch.id,
                    rows = batch.rows.len(),
                    calls = batch.calls,
                    pending_calls = self.status().pending_calls,
                    error = %e,
                    "meter flush failed; the batch is kept and retried"
                );
                Err(e)
            }
        }
    }

    /// Resolves once a durable call waits for a group commit.
    pub async fn calls_waiting(&self) {
        self.groups.calls_waiting().await;
    }

    /// Lets the next group gather up to `expected` calls (what
    /// [`Self::commit_group`] returned; see `group::Groups::gather`).
    pub async fn gather(&self, expected: u64) {
        self.groups.gather(expected).await;
    }

    /// Durable mode: commits the waiting calls as one group and answers
    /// them. The group keeps one flush id across its retries (a commit whose
    /// acknowledgement was lost is recognised, not applied twice); if it has
    /// not committed after [`GROUP_RETRY_FOR`], its calls are answered 503
    /// and it is queued for settlement. Returns how many calls the next group
    /// may expect soon: those it answered (their clients tend to call again
    /// at once) plus those already waiting; 0 when no call waited.
    pub async fn commit_group(&self) -> u64 {
        let mut conn = self.group_conn.lock().await;
        let Some(mut group) = self.groups.take() else {
            return 0;
        };
        self.in_flight_calls.store(group.calls, Ordering::Relaxed);
        self.metrics
            .meter_group_calls
            .observe(f64::from(u32::try_from(group.calls).unwrap_or(u32::MAX)));
        let flush_id = FlushId {
            id: Uuid::new_v4(),
            instance_id: self.instance_id,
        };
        let until = Instant::now() + GROUP_RETRY_FOR;
        let mut delay = Duration::from_millis(5);
        let outcome = loop {
            let timer = self.metrics.meter_flush_duration.start_timer();
            // An attempt that outlives the deadline is abandoned like a lost
            // commit: the settlement finds out what it did.
            let left = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            let result = tokio::time::timeout(left, self.apply_group(&mut conn, flush_id, &group.rows)).await;
            timer.observe_duration();
            let error = match result {
                Ok(Ok(outcome)) => {
                    if outcome == BatchOutcome::AlreadyApplied {
                        tracing::info!(flush_id = %flush_id.id, "group had already committed; not applied again");
                    }
                    break GroupOutcome::Committed;
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    *conn = None;
                    anyhow::anyhow!("group commit did not finish within {GROUP_RETRY_FOR:?}")
                }
            };
            self.flush_failures.fetch_add(1, Ordering::Relaxed);
            self.metrics.meter_flush_failures.inc();
            if Instant::now() + delay >= until {
                tracing::error!(
                    flush_id = %flush_id.id,
                    calls = group.calls,
                    error = %error,
                    "group commit failed; its calls are answered 503 and will be settled as failed"
                );
                break GroupOutcome::GivenUp;
            }
            // Debug: an outage would log every retry; the give-up is an error.
            tracing::debug!(flush_id = %flush_id.id, calls = group.calls, error = %error, "group commit failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        };
        if outcome == GroupOutcome::Committed {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.metrics.meter_flushes.inc();
        } else {
            // Queued before `in_flight_calls` drops, so `pending_calls` (what
            // a drain waits on) never reads 0 while they are unsettled.
            self.given_up_calls.fetch_add(group.calls, Ordering::Relaxed);
            self.given_up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(GivenUp {
                    original: flush_id,
                    settlement: FlushId {
                        id: Uuid::new_v4(),
                        instance_id: self.instance_id,
                    },
                    rows: std::mem::take(&mut group.rows),
                    calls: group.calls,
                });
        }
        self.in_flight_calls.store(0, Ordering::Relaxed);
        let expected = group.calls + self.groups.waiting_calls();
        group.answer(outcome);
        expected
    }

    /// One attempt at a group, on the committer's own connection (taken from
    /// the pool when there is none; dropped after an error, so a broken one
    /// is replaced).
    async fn apply_group(
        &self,
        conn: &mut Option<DbConn>,
        flush_id: FlushId,
        rows: &[(UsageKey, UsageDelta)],
    ) -> anyhow::Result<BatchOutcome> {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(self.db.get().await?),
        };
        let result = usage_cost::apply(c, Some(flush_id), rows, self.currency).await;
        if result.is_err() {
            *conn = None;
        }
        Ok(result?)
    }

    /// Settles the oldest given-up group (see `usage_cost::settle_given_up`):
    /// its calls were answered 503, so they end up counted as failed whether
    /// or not its commit landed. On failure it stays first in the queue.
    async fn settle_given_up(&self) -> anyhow::Result<FlushResult> {
        let _one_at_a_time = self.settling.lock().await;
        let Some(given_up) = self.given_up.lock().unwrap_or_else(|e| e.into_inner()).front().cloned() else {
            return Ok(FlushResult::Nothing);
        };
        let attempt = async {
            let mut conn = self.db.get().await?;
            anyhow::Ok(
                usage_cost::settle_given_up(
                    &mut conn,
                    given_up.original,
                    given_up.settlement,
                    &given_up.rows,
                    self.currency,
                )
                .await?,
            )
        };
        match attempt.await {
            Ok(settlement) => {
                // Compensated: the group had committed after all (its
                // acknowledgement was lost) and its calls were moved to failed.
                tracing::warn!(
                    flush_id = %given_up.original.id,
                    calls = given_up.calls,
                    compensated = settlement == Settlement::Compensated,
                    ?settlement,
                    "calls answered 503 are settled as failed calls"
                );
                self.given_up.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                self.given_up_calls.fetch_sub(given_up.calls, Ordering::Relaxed);
                Ok(FlushResult::Flushed {
                    rows: given_up.rows.len(),
                    calls: given_up.calls,
                })
            }
            Err(e) => {
                self.flush_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.meter_flush_failures.inc();
                tracing::warn!(flush_id = %given_up.original.id, calls = given_up.calls, error = %e, "settling a given-up group failed; retrying");
                Err(e)
            }
        }
    }

    /// Forgets flush ids older than a day (run hourly by `jobs`).
    pub async fn prune_flush_log(&self) {
        // A settlement decides by the given-up group's id: keep every id
        // while one is waiting, however long the database was away.
        if self.given_up_calls.load(Ordering::Relaxed) > 0 {
            return;
        }
        // A retry of a lost-commit flush happens within seconds; a day of
        // flush ids is far more than enough to recognise it.
        let cutoff = Utc::now() - chrono::Duration::days(1);
        if let Ok(mut conn) = self.db.get().await {
            match UsageRecord::prune_flush_log(&mut conn, cutoff).await {
                Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned old meter flush ids"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning meter flush ids failed"),
            }
        }
    }

    /// Flushes until nothing is pending or `deadline` passes (graceful
    /// shutdown). Returns the calls that could not be written.
    pub async fn drain(&self, deadline: Duration) -> u64 {
        let until = Instant::now() + deadline;
        // Durable calls the server stopped waiting for (shutdown timeout):
        // commit them as one more group; none of them was answered 2xx.
        if self.mode == MeterMode::Durable {
            self.commit_group().await;
        }
        let mut delay = Duration::from_millis(50);
        loop {
            let ok = self.flush().await.is_ok();
            let pending = self.status().pending_calls;
            if ok && pending == 0 {
                return 0;
            }
            if Instant::now() >= until {
                tracing::error!(pending_calls = pending, "shutting down with unflushed metered calls");
                return pending;
            }
            if !ok {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
