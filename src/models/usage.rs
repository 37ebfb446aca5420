//! Usage records: per (user, API, period) counters that only ever change
//! through additive upserts.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::billing::Period;
use crate::schema::{apis, meter_flushes, usage_records};

/// Which counter row a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub user_id: Uuid,
    pub api_id: i32,
    pub period: Period,
}

/// How much to add to a counter row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub calls: i64,
    pub failed_calls: i64,
}

impl UsageDelta {
    pub fn one(failed: bool) -> Self {
        Self {
            calls: 1,
            failed_calls: i64::from(failed),
        }
    }

    pub fn add(&mut self, other: UsageDelta) {
        self.calls += other.calls;
        self.failed_calls += other.failed_calls;
    }
}

#[derive(Insertable)]
#[diesel(table_name = usage_records)]
struct NewUsage {
    user_id: Uuid,
    api_id: i32,
    period: NaiveDate,
    calls: i64,
    failed_calls: i64,
}

#[derive(Insertable)]
#[diesel(table_name = meter_flushes)]
struct NewFlush {
    id: Uuid,
    instance_id: Uuid,
    rows: i32,
    calls: i64,
}

/// Identifies one batched flush, so that a retry of a flush whose COMMIT
/// outcome was lost cannot be applied twice.
#[derive(Debug, Clone, Copy)]
pub struct FlushId {
    pub id: Uuid,
    pub instance_id: Uuid,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Applied,
    /// The flush id was already recorded: an earlier attempt committed.
    AlreadyApplied,
}

/// Postgres allows 65,535 bind parameters per statement; 5 per row.
const ROWS_PER_STATEMENT: usize = 10_000;

/// One row of a user's usage for one period, with the API it counts.
#[derive(Debug, Clone, Queryable)]
pub struct UsageLine {
    pub api_id: i32,
    pub slug: String,
    pub method: String,
    pub route: String,
    pub calls: i64,
    pub failed_calls: i64,
    pub updated_at: DateTime<Utc>,
}

pub struct UsageRecord;

impl UsageRecord {
    /// Adds `deltas` to their counter rows in one transaction. `deltas` must
    /// have unique keys and be sorted by key: every writer locking rows in
    /// the same order is what keeps concurrent flushes from deadlocking.
    pub async fn add_batch(
        conn: &mut AsyncPgConnection,
        flush: Option<FlushId>,
        deltas: &[(UsageKey, UsageDelta)],
    ) -> QueryResult<BatchOutcome> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "deltas must be sorted and unique"
        );
        let rows: Vec<NewUsage> = deltas
            .iter()
            .map(|(k, d)| NewUsage {
                user_id: k.user_id,
                api_id: k.api_id,
                period: k.period.first_day(),
                calls: d.calls,
                failed_calls: d.failed_calls,
            })
            .collect();
        let total_calls: i64 = deltas.iter().map(|(_, d)| d.calls).sum();
        let result = conn
            .transaction::<_, DieselError, _>(async |conn| {
                if let Some(flush) = flush {
                    diesel::insert_into(meter_flushes::table)
                        .values(NewFlush {
                            id: flush.id,
                            instance_id: flush.instance_id,
                            rows: i32::try_from(rows.len()).unwrap_or(i32::MAX),
                            calls: total_calls,
                        })
                        .execute(conn)
                        .await?;
                }
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    diesel::insert_into(usage_records::table)
                        .values(chunk)
                        .on_conflict((
                            usage_records::user_id,
                            usage_records::api_id,
                            usage_records::period,
                        ))
                        .do_update()
                        .set((
                            usage_records::calls
                                .eq(usage_records::calls + excluded(usage_records::calls)),
                            usage_records::failed_calls
                                .eq(usage_records::failed_calls
                                    + excluded(usage_records::failed_calls)),
                            usage_records::updated_at.eq(diesel::dsl::now),
                        ))
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => Ok(BatchOutcome::Applied),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
                if flush.is_some() && info.constraint_name() == Some("meter_flushes_pkey") =>
            {
                Ok(BatchOutcome::AlreadyApplied)
            }
            Err(e) => Err(e),
        }
    }

    /// The caller's usage for one period, one line per API used.
    pub async fn for_user_period(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        period: Period,
    ) -> QueryResult<Vec<UsageLine>> {
        usage_records::table
            .inner_join(apis::table)
            .filter(usage_records::user_id.eq(user_id))
            .filter(usage_records::period.eq(period.first_day()))
            .order(apis::slug)
            .select((
                apis::id,
                apis::slug,
                apis::method,
                apis::route,
                usage_records::calls,
                usage_records::failed_calls,
                usage_records::updated_at,
            ))
            .load(conn)
            .await
    }

    /// Forgets flush ids old enough that no retry can still be in flight.
    pub async fn prune_flush_log(
        conn: &mut AsyncPgConnection,
        older_than: DateTime<Utc>,
    ) -> QueryResult<usize> {
        diesel::delete(meter_flushes::table.filter(meter_flushes::applied_at.lt(older_than)))
            .execute(conn)
            .await
    }
}
