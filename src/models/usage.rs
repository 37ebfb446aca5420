//! Usage records: per (user, API, period) counters that only ever change
//! through additive upserts.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::billing::pricing::price_line;
use crate::billing::{Currency, Period};
use crate::models::price::PriceBook;
use crate::schema::{apis, meter_flushes, usage_records, users};

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

/// A counter row as the upsert left it.
#[derive(QueryableByName)]
struct UpsertedRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    user_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    api_id: i32,
    #[diesel(sql_type = diesel::sql_types::Date)]
    period: NaiveDate,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    calls: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed_calls: i64,
}

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

/// One row of a user's usage for one period, with the API it counts.
#[derive(Debug, Clone, Queryable)]
pub struct UsageLine {
    pub api_id: i32,
    pub slug: String,
    pub name: String,
    pub method: String,
    pub route: String,
    pub calls: i64,
    pub failed_calls: i64,
    pub updated_at: DateTime<Utc>,
}

/// The columns a [`UsageLine`] is read from.
type LineColumns = (
    apis::id,
    apis::slug,
    apis::name,
    apis::method,
    apis::route,
    usage_records::calls,
    usage_records::failed_calls,
    usage_records::updated_at,
);
const LINE_COLUMNS: LineColumns = (
    apis::id,
    apis::slug,
    apis::name,
    apis::method,
    apis::route,
    usage_records::calls,
    usage_records::failed_calls,
    usage_records::updated_at,
);

pub struct UsageRecord;

impl UsageRecord {
    /// Adds `deltas` to their counter rows and the priced difference to each
    /// user's `total_cost`, in one transaction. `deltas` must have unique keys
    /// and be sorted by key: every writer locking rows in the same order is
    /// what keeps concurrent flushes from deadlocking.
    pub async fn add_batch(
        conn: &mut AsyncPgConnection,
        flush: Option<FlushId>,
        deltas: &[(UsageKey, UsageDelta)],
        currency: Currency,
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
                // Five array parameters whatever the batch size: the statement
                // text never changes, so PostgreSQL does not re-plan a
                // thousands-of-parameters VALUES list on every flush. unnest
                // keeps the (sorted) input order, which is the lock order.
                use diesel::sql_types::{Array, BigInt, Date, Integer};
                let after: Vec<(Uuid, i32, NaiveDate, i64, i64)> = diesel::sql_query(
                    "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls) \
                     SELECT * FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::int8[], $5::int8[]) \
                     ON CONFLICT (user_id, api_id, period) DO UPDATE SET \
                       calls = usage_records.calls + EXCLUDED.calls, \
                       failed_calls = usage_records.failed_calls + EXCLUDED.failed_calls, \
                       updated_at = now() \
                     RETURNING user_id, api_id, period, calls, failed_calls",
                )
                .bind::<Array<diesel::sql_types::Uuid>, _>(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
                .bind::<Array<Integer>, _>(rows.iter().map(|r| r.api_id).collect::<Vec<_>>())
                .bind::<Array<Date>, _>(rows.iter().map(|r| r.period).collect::<Vec<_>>())
                .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.calls).collect::<Vec<_>>())
                .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.failed_calls).collect::<Vec<_>>())
                .load::<UpsertedRow>(conn)
                .await?
                .into_iter()
                .map(|r| (r.user_id, r.api_id, r.period, r.calls, r.failed_calls))
                .collect();
                add_cost_deltas(conn, deltas, &after, currency).await
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
            .select(LINE_COLUMNS)
            .load(conn)
            .await
    }

    /// Every user's usage for one period: (user, line), by user then API.
    pub async fn lines_for_period(conn: &mut AsyncPgConnection, period: Period) -> QueryResult<Vec<(Uuid, UsageLine)>> {
        usage_records::table
            .inner_join(apis::table)
            .filter(usage_records::period.eq(period.first_day()))
            .order((usage_records::user_id, apis::slug))
            .select((usage_records::user_id, LINE_COLUMNS))
            .load(conn)
            .await
    }

    /// Forgets flush ids old enough that no retry can still be in flight.
    pub async fn prune_flush_log(conn: &mut AsyncPgConnection, older_than: DateTime<Utc>) -> QueryResult<usize> {
        diesel::delete(meter_flushes::table.filter(meter_flushes::applied_at.lt(older_than)))
            .execute(conn)
            .await
    }
}

/// Keeps `users.total_cost` equal to the priced sum of the user's records:
/// each touched record adds `price(after) − price(before)`, priced with the
/// version in force for its period (prices are not linear, so the
/// difference, not the delta's own price).
async fn add_cost_deltas(
    conn: &mut AsyncPgConnection,
    deltas: &[(UsageKey, UsageDelta)],
    after: &[(Uuid, i32, NaiveDate, i64, i64)],
    currency: Currency,
) -> QueryResult<()> {
    let mut api_ids: Vec<i32> = deltas.iter().map(|(k, _)| k.api_id).collect();
    api_ids.sort_unstable();
    api_ids.dedup();
    let book = PriceBook::load(conn, Some(&api_ids)).await?;
    let mut per_user: std::collections::BTreeMap<Uuid, rust_decimal::Decimal> = std::collections::BTreeMap::new();
    for &(user_id, api_id, period, calls, failed_calls) in after {
        let Some(period) = Period::from_first_day(period) else {
            continue;
        };
        let key = UsageKey {
            user_id,
            api_id,
            period,
        };
        let Ok(i) = deltas.binary_search_by(|(k, _)| k.cmp(&key)) else {
            continue;
        };
        let delta = deltas[i].1;
        let price = book.for_period_or_free(api_id, period, currency);
        let now = price_line(calls, failed_calls, &price).amount;
        let before = price_line(calls - delta.calls, failed_calls - delta.failed_calls, &price).amount;
        if now != before {
            *per_user.entry(user_id).or_default() += now - before;
        }
    }
    if per_user.is_empty() {
        return Ok(());
    }
    // Lock the users in id order first, so two flushes never wait on each
    // other's users in opposite orders.
    let ids: Vec<Uuid> = per_user.keys().copied().collect();
    users::table
        .filter(users::id.eq_any(&ids))
        .order(users::id)
        .select(users::id)
        .for_no_key_update()
        .load::<Uuid>(conn)
        .await?;
    let amounts: Vec<rust_decimal::Decimal> = per_user.values().copied().collect();
    diesel::sql_query(
        "UPDATE users SET total_cost = users.total_cost + d.delta \
         FROM unnest($1::uuid[], $2::numeric[]) AS d(id, delta) WHERE users.id = d.id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Numeric>, _>(&amounts)
    .execute(conn)
    .await?;
    Ok(())
}
