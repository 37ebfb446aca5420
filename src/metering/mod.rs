//! Metering: every authenticated call to a catalog API is counted per user,
//! per API, per period.
//!
//! - [`middleware`]: the actix middleware on the metered scope (authenticate,
//!   resolve the API, call the handler, record the outcome).
//! - [`catalog`]: method + route pattern (or gateway prefix) → API, in memory.
//! - [`rate_limit`]: per-user rate limits leased from Redis in batches.
//! - [`recorder`]: in-memory pending deltas (batched mode).
//! - [`Meter`] (here): the mode switch and the flush that moves pending
//!   deltas into `usage_records` with one atomic multi-row upsert
//!   (`billing::usage_cost`); `jobs` runs it on a timer.

pub mod catalog;
pub mod middleware;
pub mod rate_limit;
pub mod recorder;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::billing::usage_cost::{self, BatchOutcome};
use crate::config::MeterMode;
use crate::db::DbPool;
use crate::domain::Currency;
use crate::models::usage::{FlushId, UsageDelta, UsageKey, UsageRecord};
use crate::telemetry::Metrics;

pub use catalog::Catalog;
pub use middleware::metered_call;
pub use recorder::Recorder;

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
    pub clock: Arc<dyn crate::domain::Clock>,
    pub billing_tz: chrono_tz::Tz,
    /// `payg_rate_limit_refusals_total`.
    pub rate_limit_refusals: prometheus::IntCounter,
}

/// A drained batch waiting to be written, with the id it keeps across retries.
struct PendingFlush {
    id: Uuid,
    rows: Vec<(UsageKey, UsageDelta)>,
    calls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushResult {
    Nothing,
    Flushed { rows: usize, calls: u64 },
}

/// A snapshot of the meter for operators (in `GET /readyz`).
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct MeterStatus {
    /// `batched`, `sync` or `off`.
    #[schema(value_type = String)]
    pub mode: &'static str,
    /// Calls counted in memory and not yet committed to PostgreSQL.
    pub pending_calls: u64,
    /// Batches committed since start.
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
        }
    }

    pub fn mode(&self) -> MeterMode {
        self.mode
    }

    /// Batched mode: count the call in memory. Never awaits.
    pub fn record(&self, key: UsageKey, delta: UsageDelta) {
        self.recorder.record(key, delta);
    }

    /// Sync mode: commit the increment now.
    pub async fn record_now(&self, key: UsageKey, delta: UsageDelta) -> anyhow::Result<()> {
        let mut conn = self.db.get().await?;
        usage_cost::apply(&mut conn, None, &[(key, delta)], self.currency).await?;
        Ok(())
    }

    pub fn status(&self) -> MeterStatus {
        MeterStatus {
            mode: match self.mode {
                MeterMode::Batched => "batched",
                MeterMode::Sync => "sync",
                MeterMode::Off => "off",
            },
            pending_calls: self.recorder.buffered_calls() + self.in_flight_calls.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_failures: self.flush_failures.load(Ordering::Relaxed),
        }
    }

    /// One flush attempt. A batch that fails stays in flight with its id and
    /// is retried by the next attempt before anything newer is drained, so a
    /// batch is never dropped and (thanks to the id) never applied twice.
    pub async fn flush(&self) -> anyhow::Result<FlushResult> {
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

    /// Forgets flush ids older than a day (run hourly by `jobs`).
    pub async fn prune_flush_log(&self) {
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
