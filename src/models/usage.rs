//! Usage records: per (user, API, period) counters, and beside them per
//! (user, API, period, price version in force on arrival) and per (user,
//! API, day) counters, that only ever change through additive upserts — all
//! in the same transaction, so a period's versions and its days each add up
//! to its month.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Day, DayRange, Period};
use crate::schema::{apis, meter_flushes, usage_prices, usage_records};

/// Which counter rows a call adds to: its day's (`usage_daily`), through
/// the day its period's (`usage_records`), and, through the second it
/// arrived in, the row of the price version in force then
/// (`usage_prices`, resolved when the count is written). Fixed when the
/// call arrives. Ordered by user, API, day, then second, so the days (and
/// seconds) of one (user, API, period) are neighbours once sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub user_id: Uuid,
    pub api_id: i32,
    /// The day the call arrived on, in the billing time zone.
    pub day: Day,
    /// The Unix second the call arrived in: what decides its price.
    pub second: i64,
}

impl UsageKey {
    /// The `usage_daily` row the call belongs to.
    pub fn daily(&self) -> DailyKey {
        DailyKey {
            user_id: self.user_id,
            api_id: self.api_id,
            day: self.day,
        }
    }

    /// The period the call belongs to: its day's month.
    pub fn period(&self) -> Period {
        self.day.period()
    }

    /// The `usage_records` row the call belongs to.
    pub fn monthly(&self) -> MonthlyKey {
        MonthlyKey {
            user_id: self.user_id,
            api_id: self.api_id,
            period: self.period(),
        }
    }
}

/// Which `usage_daily` row (user, API, day) a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DailyKey {
    pub user_id: Uuid,
    pub api_id: i32,
    pub day: Day,
}

impl DailyKey {
    pub fn period(&self) -> Period {
        self.day.period()
    }
}

/// Which `usage_prices` row (user, API, period, price version) a count
/// belongs to: the version is the one in force when its calls arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PricedKey {
    pub user_id: Uuid,
    pub api_id: i32,
    pub period: Period,
    /// `prices.id`, or `models::price::UNPRICED`.
    pub price_id: i32,
}

impl PricedKey {
    pub fn monthly(&self) -> MonthlyKey {
        MonthlyKey {
            user_id: self.user_id,
            api_id: self.api_id,
            period: self.period,
        }
    }
}

/// Which `usage_records` row (user, API, period) a count belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MonthlyKey {
    pub user_id: Uuid,
    pub api_id: i32,
    pub period: Period,
}

/// `deltas` (sorted by key, unique) merged per (user, API, period): sorted
/// and unique in turn, since the days of one period are neighbours.
pub fn by_period(deltas: &[(UsageKey, UsageDelta)]) -> Vec<(MonthlyKey, UsageDelta)> {
    let mut monthly: Vec<(MonthlyKey, UsageDelta)> = Vec::with_capacity(deltas.len());
    for (key, delta) in deltas {
        let key = key.monthly();
        match monthly.last_mut() {
            Some((last, sum)) if *last == key => sum.add(*delta),
            _ => monthly.push((key, *delta)),
        }
    }
    monthly
}

/// `deltas` (sorted by key, unique) merged per (user, API, day): sorted
/// and unique in turn, since the seconds of one day are neighbours.
pub fn by_day(deltas: &[(UsageKey, UsageDelta)]) -> Vec<(DailyKey, UsageDelta)> {
    let mut daily: Vec<(DailyKey, UsageDelta)> = Vec::with_capacity(deltas.len());
    for (key, delta) in deltas {
        let key = key.daily();
        match daily.last_mut() {
            Some((last, sum)) if *last == key => sum.add(*delta),
            _ => daily.push((key, *delta)),
        }
    }
    daily
}

/// How much to add to a counter row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub calls: i64,
    pub failed_calls: i64,
    /// What the calls reserved against their user's spending cap when they
    /// were admitted: released from the instance's lease in the transaction
    /// that counts them (0 for users without a cap).
    pub reserved: Decimal,
}

impl UsageDelta {
    pub fn one(failed: bool) -> Self {
        Self {
            calls: 1,
            failed_calls: i64::from(failed),
            reserved: Decimal::ZERO,
        }
    }

    /// One call that reserved `reserved` of its user's cap.
    pub fn one_reserving(failed: bool, reserved: Decimal) -> Self {
        Self {
            reserved,
            ..Self::one(failed)
        }
    }

    pub fn add(&mut self, other: UsageDelta) {
        self.calls += other.calls;
        self.failed_calls += other.failed_calls;
        self.reserved += other.reserved;
    }
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
);
const LINE_COLUMNS: LineColumns = (
    apis::id,
    apis::slug,
    apis::name,
    apis::method,
    apis::route,
    usage_records::calls,
    usage_records::failed_calls,
);

/// One API's calls on one day, in a period whose days add up to its
/// monthly total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DayUsage {
    pub day: Day,
    /// The API's catalog slug.
    pub api: String,
    pub calls: i64,
    /// Calls answered with a 4xx/5xx (never billed).
    pub failed_calls: i64,
}

/// One API's calls in a whole period whose days do not add up to its
/// monthly total: calls counted before daily counts existed, or imported
/// without days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MonthlyOnlyUsage {
    pub period: Period,
    /// The API's catalog slug.
    pub api: String,
    /// The whole period's calls, however much of it the range covers.
    pub calls: i64,
    /// Calls answered with a 4xx/5xx (never billed).
    pub failed_calls: i64,
}

/// A user's calls over a [`DayRange`], by day where the days can be
/// trusted, by month where they cannot ([`UsageDaily::report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyReport {
    /// By day then API; days without calls have no line.
    pub days: Vec<DayUsage>,
    /// By period then API.
    pub monthly_only: Vec<MonthlyOnlyUsage>,
}

/// One row of [`UsageDaily::report`]'s statement: a day line, or a
/// monthly-only line (`date`: its period's first day).
#[derive(QueryableByName)]
struct ReportRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    monthly_only: bool,
    #[diesel(sql_type = diesel::sql_types::Date)]
    date: NaiveDate,
    #[diesel(sql_type = diesel::sql_types::Text)]
    slug: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    calls: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    failed_calls: i64,
}

pub struct UsageRecord;

impl UsageRecord {
    /// Records a batched flush's id; false when that id was recorded before
    /// (an earlier attempt whose COMMIT outcome was lost did land). Call it
    /// first in the flush's transaction, so the id and the counts commit
    /// together or not at all.
    pub async fn record_flush(
        conn: &mut AsyncPgConnection,
        flush: FlushId,
        rows: usize,
        calls: i64,
    ) -> QueryResult<bool> {
        let inserted = diesel::insert_into(meter_flushes::table)
            .values(NewFlush {
                id: flush.id,
                instance_id: flush.instance_id,
                rows: i32::try_from(rows).unwrap_or(i32::MAX),
                calls,
            })
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        Ok(inserted == 1)
    }

    /// Adds `deltas` to their counter rows with one atomic upsert. `deltas` must have unique keys and be sorted
    /// by key: every writer locking rows in the same order is what keeps
    /// concurrent flushes from deadlocking. A flush calls it before
    /// [`UsageDaily::add`]: a day's row is written under its month's lock.
    pub async fn add(conn: &mut AsyncPgConnection, deltas: &[(MonthlyKey, UsageDelta)]) -> QueryResult<()> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "deltas must be sorted and unique"
        );
        // Five array parameters whatever the batch size: the statement text
        // never changes, so PostgreSQL does not re-plan a thousands-of-
        // parameters VALUES list on every flush. unnest keeps the (sorted)
        // input order, which is the lock order.
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls) \
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::int8[], $5::int8[]) \
             ON CONFLICT (user_id, api_id, period) DO UPDATE SET \
               calls = usage_records.calls + EXCLUDED.calls, \
               failed_calls = usage_records.failed_calls + EXCLUDED.failed_calls, \
               updated_at = now()",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(deltas.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(deltas.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(deltas.iter().map(|(k, _)| k.period.first_day()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.calls).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.failed_calls).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// Moves calls already counted to `failed_calls` (`moved`: sorted,
    /// unique keys, as for [`UsageRecord::add`], whose lock order it keeps). An upsert, not an UPDATE, for
    /// that lock order; the row the insert would make (`moved` calls, all
    /// failed) satisfies the table's checks, which PostgreSQL tests before it
    /// finds the conflict. The rows exist: their calls were counted.
    pub async fn move_to_failed(conn: &mut AsyncPgConnection, moved: &[(MonthlyKey, i64)]) -> QueryResult<()> {
        debug_assert!(
            moved.windows(2).all(|w| w[0].0 < w[1].0),
            "moved must be sorted and unique"
        );
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls) \
             SELECT u, a, p, n, n FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::int8[]) AS m(u, a, p, n) \
             ON CONFLICT (user_id, api_id, period) DO UPDATE SET \
               failed_calls = usage_records.failed_calls + EXCLUDED.failed_calls, \
               updated_at = now()",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(moved.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(moved.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(moved.iter().map(|(k, _)| k.period.first_day()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(moved.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
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

    /// Past periods (before `current`) with usage and no close yet, oldest first.
    pub async fn unclosed_periods_before(conn: &mut AsyncPgConnection, current: Period) -> QueryResult<Vec<Period>> {
        use crate::schema::closed_periods;
        let days: Vec<NaiveDate> = usage_records::table
            .filter(usage_records::period.lt(current.first_day()))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                closed_periods::table.filter(closed_periods::period.eq(usage_records::period)),
            )))
            .select(usage_records::period)
            .distinct()
            .order(usage_records::period)
            .load(conn)
            .await?;
        Ok(days.into_iter().filter_map(Period::from_first_day).collect())
    }

    /// Forgets flush ids old enough that no retry can still be in flight.
    pub async fn prune_flush_log(conn: &mut AsyncPgConnection, older_than: DateTime<Utc>) -> QueryResult<usize> {
        diesel::delete(meter_flushes::table.filter(meter_flushes::applied_at.lt(older_than)))
            .execute(conn)
            .await
    }
}

/// One `usage_prices` row: a (user, API, period)'s calls under one price
/// version.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct VersionCounters {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub user_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub api_id: i32,
    #[diesel(sql_type = diesel::sql_types::Date)]
    pub period: NaiveDate,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub price_id: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub calls: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub failed_calls: i64,
}

/// A user's calls to one API in one period under one price version, with
/// the API's names: what a statement line prices.
#[derive(Debug, Clone, Queryable)]
pub struct VersionUsage {
    pub api_id: i32,
    pub slug: String,
    pub name: String,
    pub price_id: i32,
    pub calls: i64,
    pub failed_calls: i64,
}

type VersionColumns = (
    apis::id,
    apis::slug,
    apis::name,
    usage_prices::price_id,
    usage_prices::calls,
    usage_prices::failed_calls,
);
const VERSION_COLUMNS: VersionColumns = (
    apis::id,
    apis::slug,
    apis::name,
    usage_prices::price_id,
    usage_prices::calls,
    usage_prices::failed_calls,
);

/// Counters per price version: per (user, API, period, version in force
/// when the calls arrived), written only beside [`UsageRecord`]'s, in the
/// same transaction and from the same deltas, so the versions of a period
/// add up to its month. Statements, close and `users.total_cost` price these
/// rows, never the monthly ones.
pub struct UsagePrice;

impl UsagePrice {
    /// Adds `deltas` (sorted, unique keys: the lock order) to their rows with
    /// one atomic upsert. Call it after [`UsageRecord::add`], in the same
    /// transaction: each row belongs to its month's row, locked already.
    pub async fn add(conn: &mut AsyncPgConnection, deltas: &[(PricedKey, UsageDelta)]) -> QueryResult<()> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "deltas must be sorted and unique"
        );
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls) \
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::int4[], $5::int8[], $6::int8[]) \
             ON CONFLICT (user_id, api_id, period, price_id) DO UPDATE SET \
               calls = usage_prices.calls + EXCLUDED.calls, \
               failed_calls = usage_prices.failed_calls + EXCLUDED.failed_calls",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(deltas.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(deltas.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(deltas.iter().map(|(k, _)| k.period.first_day()).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(deltas.iter().map(|(k, _)| k.price_id).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.calls).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.failed_calls).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// [`UsageRecord::move_to_failed`] for the version rows (`moved`:
    /// sorted, unique keys), after it, in the same transaction.
    pub async fn move_to_failed(conn: &mut AsyncPgConnection, moved: &[(PricedKey, i64)]) -> QueryResult<()> {
        debug_assert!(
            moved.windows(2).all(|w| w[0].0 < w[1].0),
            "moved must be sorted and unique"
        );
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls) \
             SELECT u, a, p, v, n, n FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::int4[], $5::int8[]) \
               AS m(u, a, p, v, n) \
             ON CONFLICT (user_id, api_id, period, price_id) DO UPDATE SET \
               failed_calls = usage_prices.failed_calls + EXCLUDED.failed_calls",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(moved.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(moved.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(moved.iter().map(|(k, _)| k.period.first_day()).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(moved.iter().map(|(k, _)| k.price_id).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(moved.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// Every version row of the (user, API, period)s `records` names, as
    /// they are now (in the caller's transaction, after its upserts).
    pub async fn of_records(conn: &mut AsyncPgConnection, records: &[MonthlyKey]) -> QueryResult<Vec<VersionCounters>> {
        use diesel::sql_types::{Array, Date, Integer};
        diesel::sql_query(
            "SELECT v.user_id, v.api_id, v.period, v.price_id, v.calls, v.failed_calls \
             FROM usage_prices v \
             JOIN unnest($1::uuid[], $2::int4[], $3::date[]) AS r(u, a, p) \
               ON v.user_id = r.u AND v.api_id = r.a AND v.period = r.p",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(records.iter().map(|k| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(records.iter().map(|k| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(records.iter().map(|k| k.period.first_day()).collect::<Vec<_>>())
        .load(conn)
        .await
    }

    /// A user's version rows in `periods` (what a spending cap's bound is
    /// computed from).
    pub async fn of_user_periods(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        periods: &[Period],
    ) -> QueryResult<Vec<VersionCounters>> {
        use diesel::sql_types::{Array, Date};
        diesel::sql_query(
            "SELECT user_id, api_id, period, price_id, calls, failed_calls FROM usage_prices \
             WHERE user_id = $1 AND period = ANY($2::date[]) ORDER BY period, api_id, price_id",
        )
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .bind::<Array<Date>, _>(periods.iter().map(|p| p.first_day()).collect::<Vec<_>>())
        .load(conn)
        .await
    }

    /// The caller's usage for one period, one row per API and version.
    pub async fn for_user_period(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        period: Period,
    ) -> QueryResult<Vec<VersionUsage>> {
        usage_prices::table
            .inner_join(apis::table.on(apis::id.eq(usage_prices::api_id)))
            .filter(usage_prices::user_id.eq(user_id))
            .filter(usage_prices::period.eq(period.first_day()))
            .order((apis::slug, usage_prices::price_id))
            .select(VERSION_COLUMNS)
            .load(conn)
            .await
    }

    /// Every user's usage for one period: (user, row), by user then API.
    pub async fn lines_for_period(
        conn: &mut AsyncPgConnection,
        period: Period,
    ) -> QueryResult<Vec<(Uuid, VersionUsage)>> {
        usage_prices::table
            .inner_join(apis::table.on(apis::id.eq(usage_prices::api_id)))
            .filter(usage_prices::period.eq(period.first_day()))
            .order((usage_prices::user_id, apis::slug, usage_prices::price_id))
            .select((usage_prices::user_id, VERSION_COLUMNS))
            .load(conn)
            .await
    }
}

/// Daily counters: per (user, API, day in the billing zone), written only
/// beside [`UsageRecord`]'s, in the same transaction and with the same
/// deltas, so a period's days add up to its month — for every (user, API,
/// period) whose calls were all counted since daily counts exist. Calls
/// counted before (an instance still running older code in the month of an
/// upgrade) or rows imported into `usage_records` without days leave a
/// period's days short of its month, for good: later flushes add the same
/// to both. [`UsageDaily::report`] shows such a period by its month only.
pub struct UsageDaily;

impl UsageDaily {
    /// Adds `deltas` (sorted, unique keys: the lock order) to their day rows
    /// with one atomic upsert. Call it after [`UsageRecord::add`] with the
    /// same deltas (merged by period there), in the same transaction: each
    /// day row belongs to its month's row, which is then locked already.
    pub async fn add(conn: &mut AsyncPgConnection, deltas: &[(DailyKey, UsageDelta)]) -> QueryResult<()> {
        debug_assert!(
            deltas.windows(2).all(|w| w[0].0 < w[1].0),
            "deltas must be sorted and unique"
        );
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_daily (user_id, api_id, day, period, calls, failed_calls) \
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::date[], $5::int8[], $6::int8[]) \
             ON CONFLICT (user_id, api_id, day) DO UPDATE SET \
               calls = usage_daily.calls + EXCLUDED.calls, \
               failed_calls = usage_daily.failed_calls + EXCLUDED.failed_calls",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(deltas.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(deltas.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(deltas.iter().map(|(k, _)| k.day.date()).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(deltas.iter().map(|(k, _)| k.period().first_day()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.calls).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(deltas.iter().map(|(_, d)| d.failed_calls).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// [`UsageRecord::move_to_failed`] for the day rows (`moved`: sorted,
    /// unique keys), after it, in the same transaction.
    pub async fn move_to_failed(conn: &mut AsyncPgConnection, moved: &[(DailyKey, i64)]) -> QueryResult<()> {
        debug_assert!(
            moved.windows(2).all(|w| w[0].0 < w[1].0),
            "moved must be sorted and unique"
        );
        use diesel::sql_types::{Array, BigInt, Date, Integer};
        diesel::sql_query(
            "INSERT INTO usage_daily (user_id, api_id, day, period, calls, failed_calls) \
             SELECT u, a, d, p, n, n FROM unnest($1::uuid[], $2::int4[], $3::date[], $4::date[], $5::int8[]) \
               AS m(u, a, d, p, n) \
             ON CONFLICT (user_id, api_id, day) DO UPDATE SET \
               failed_calls = usage_daily.failed_calls + EXCLUDED.failed_calls",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(moved.iter().map(|(k, _)| k.user_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(moved.iter().map(|(k, _)| k.api_id).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(moved.iter().map(|(k, _)| k.day.date()).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(moved.iter().map(|(k, _)| k.period().first_day()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(moved.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// The user's calls over `range` (of one API when `api_id` is set): the
    /// days of each (period, API) line whose days, over the whole period,
    /// add up to its monthly row (calls and failed calls), and the whole
    /// monthly row of each line the range reaches into whose days do not.
    /// One statement, so one snapshot: a flush commits a line's month and
    /// days together, and is seen whole or not at all.
    pub async fn report(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        range: DayRange,
        api_id: Option<i32>,
    ) -> QueryResult<DailyReport> {
        use diesel::sql_types::{Date, Integer, Nullable};
        // `sums` and `lines` cover the whole periods the range reaches into
        // ($2 ≤ day < $3), whatever part of them it covers ($4 ≤ day ≤ $5).
        let rows: Vec<ReportRow> = diesel::sql_query(
            "WITH sums AS ( \
               SELECT api_id, period, sum(calls) AS calls, sum(failed_calls) AS failed_calls \
               FROM usage_daily \
               WHERE user_id = $1 AND day >= $2 AND day < $3 AND ($6::int4 IS NULL OR api_id = $6) \
               GROUP BY api_id, period \
             ), lines AS ( \
               SELECT r.api_id, r.period, r.calls, r.failed_calls, \
                      r.calls = coalesce(s.calls, 0) AND r.failed_calls = coalesce(s.failed_calls, 0) \
                        AS days_add_up \
               FROM usage_records r LEFT JOIN sums s USING (api_id, period) \
               WHERE r.user_id = $1 AND r.period >= $2 AND r.period < $3 \
                 AND ($6::int4 IS NULL OR r.api_id = $6) \
             ) \
             SELECT false AS monthly_only, d.day AS date, a.slug, d.calls, d.failed_calls \
             FROM usage_daily d \
             JOIN lines l ON l.api_id = d.api_id AND l.period = d.period AND l.days_add_up \
             JOIN apis a ON a.id = d.api_id \
             WHERE d.user_id = $1 AND d.day BETWEEN $4 AND $5 AND d.calls > 0 \
             UNION ALL \
             SELECT true, l.period, a.slug, l.calls, l.failed_calls \
             FROM lines l JOIN apis a ON a.id = l.api_id \
             WHERE NOT l.days_add_up \
             ORDER BY monthly_only, date, slug",
        )
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .bind::<Date, _>(range.first().period().first_day())
        .bind::<Date, _>(range.last().period().next().first_day())
        .bind::<Date, _>(range.first().date())
        .bind::<Date, _>(range.last().date())
        .bind::<Nullable<Integer>, _>(api_id)
        .load(conn)
        .await?;
        let mut report = DailyReport::default();
        for row in rows {
            if !row.monthly_only {
                report.days.push(DayUsage {
                    day: Day::from(row.date),
                    api: row.slug,
                    calls: row.calls,
                    failed_calls: row.failed_calls,
                });
            } else if let Some(period) = Period::from_first_day(row.date) {
                report.monthly_only.push(MonthlyOnlyUsage {
                    period,
                    api: row.slug,
                    calls: row.calls,
                    failed_calls: row.failed_calls,
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_merged_by_period_keeps_the_lock_order_and_every_call() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let key = |user_id, api_id, day: &str| UsageKey {
            user_id,
            api_id,
            day: day.parse().unwrap(),
            second: 7,
        };
        let d = |calls, failed_calls| UsageDelta {
            calls,
            failed_calls,
            ..UsageDelta::default()
        };
        let mut deltas = vec![
            (key(b, 1, "2026-10-31"), d(1, 0)),
            (
                UsageKey {
                    second: 8,
                    ..key(a, 1, "2026-11-02")
                },
                d(1, 0),
            ),
            (key(a, 2, "2026-11-01"), d(2, 2)),
            (key(a, 1, "2026-11-02"), d(3, 1)),
            (key(a, 1, "2026-10-30"), d(4, 0)),
            (key(a, 1, "2026-11-01"), d(5, 0)),
            (key(a, 1, "2026-10-31"), d(6, 1)),
        ];
        deltas.sort_unstable_by_key(|(k, _)| *k);
        let monthly = |user_id, api_id, period: &str| MonthlyKey {
            user_id,
            api_id,
            period: period.parse().unwrap(),
        };
        assert_eq!(
            by_period(&deltas),
            vec![
                (monthly(a, 1, "2026-10"), d(10, 1)),
                (monthly(a, 1, "2026-11"), d(9, 1)),
                (monthly(a, 2, "2026-11"), d(2, 2)),
                (monthly(b, 1, "2026-10"), d(1, 0)),
            ]
        );
        let daily = by_day(&deltas);
        assert_eq!(daily.len(), 6, "two seconds of one day make one day row");
        assert!(daily.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(daily.iter().map(|(_, d)| d.calls).sum::<i64>(), 22);
    }
}
