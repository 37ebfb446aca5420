//! A meter flush as billing sees it: the counters move (each period's row
//! and each day's row beside it) and every touched user's `total_cost`
//! moves with them, in one transaction, so the stored total always equals
//! the priced sum of the user's records, and a period's days add up to it.

use std::collections::BTreeMap;

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::pricing::price_line;
use crate::domain::{Currency, Period};
use crate::models::User;
use crate::models::price::PriceBook;
use crate::models::usage::{Counters, FlushId, MonthlyKey, UsageDaily, UsageDelta, UsageKey, UsageRecord, by_period};

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Applied,
    /// The flush id was already recorded: an earlier attempt committed.
    AlreadyApplied,
}

/// Adds `deltas` (sorted, unique keys) to the usage records (merged by
/// period) and to the daily counts, and the priced difference to each
/// user's `total_cost`. With a `flush` id the batch is applied at most once
/// however often it is retried: all of it, or none.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    flush: Option<FlushId>,
    deltas: &[(UsageKey, UsageDelta)],
    currency: Currency,
) -> QueryResult<BatchOutcome> {
    let total_calls: i64 = deltas.iter().map(|(_, d)| d.calls).sum();
    conn.transaction(async |conn| {
        if let Some(flush) = flush
            && !UsageRecord::record_flush(conn, flush, deltas.len(), total_calls).await?
        {
            return Ok(BatchOutcome::AlreadyApplied);
        }
        add_priced(conn, deltas, currency).await?;
        Ok(BatchOutcome::Applied)
    })
    .await
}

/// How a durable group that was answered 503 ended up (see [`settle_given_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The group had never committed: it is now applied with every call failed.
    AppliedAsFailed,
    /// The group's commit had landed (its acknowledgement was lost): the calls
    /// it counted as served are moved to failed.
    Compensated,
    /// An earlier attempt of this settlement committed.
    AlreadySettled,
}

/// Makes the calls of a durable group that was answered 503 end up counted
/// as failed, never billed, whatever happened to the group's own commit
/// (`original`): in one transaction it records `settlement` (so a retry of
/// the settlement applies nothing twice), then takes `original`'s id. If the
/// id was free, the group never committed, and now never can (its id is
/// taken): the batch is added with every call failed. If it was taken, the
/// group did commit, and the calls it counted as served are moved to failed.
/// A commit of `original` still in flight makes the insert wait for it (the
/// primary key), so the answer is never a guess.
pub async fn settle_given_up(
    conn: &mut AsyncPgConnection,
    original: FlushId,
    settlement: FlushId,
    deltas: &[(UsageKey, UsageDelta)],
    currency: Currency,
) -> QueryResult<Settlement> {
    let total_calls: i64 = deltas.iter().map(|(_, d)| d.calls).sum();
    conn.transaction(async |conn| {
        if !UsageRecord::record_flush(conn, settlement, deltas.len(), total_calls).await? {
            return Ok(Settlement::AlreadySettled);
        }
        if UsageRecord::record_flush(conn, original, deltas.len(), total_calls).await? {
            let as_failed: Vec<_> = deltas
                .iter()
                .map(|(k, d)| {
                    let failed = UsageDelta {
                        calls: d.calls,
                        failed_calls: d.calls,
                    };
                    (*k, failed)
                })
                .collect();
            add_priced(conn, &as_failed, currency).await?;
            return Ok(Settlement::AppliedAsFailed);
        }
        let moved: Vec<_> = deltas
            .iter()
            .filter(|(_, d)| d.calls > d.failed_calls)
            .map(|(k, d)| {
                let delta = UsageDelta {
                    calls: 0,
                    failed_calls: d.calls - d.failed_calls,
                };
                (*k, delta)
            })
            .collect();
        if !moved.is_empty() {
            // Per period for the records (and their price), per day beside
            // them: the same calls move in both.
            let monthly = by_period(&moved);
            let monthly_moved: Vec<_> = monthly.iter().map(|(k, d)| (*k, d.failed_calls)).collect();
            let after = UsageRecord::move_to_failed(conn, &monthly_moved).await?;
            let daily_moved: Vec<_> = moved.iter().map(|(k, d)| (*k, d.failed_calls)).collect();
            UsageDaily::move_to_failed(conn, &daily_moved).await?;
            add_cost(conn, &monthly, &after, currency).await?;
        }
        Ok(Settlement::Compensated)
    })
    .await
}

/// The counter upserts — per period, then per day — and the priced
/// difference on each user's total, inside the caller's transaction. Prices
/// apply to the period rows, as they always have: the days only count.
async fn add_priced(
    conn: &mut AsyncPgConnection,
    deltas: &[(UsageKey, UsageDelta)],
    currency: Currency,
) -> QueryResult<()> {
    let monthly = by_period(deltas);
    let after = UsageRecord::add(conn, &monthly).await?;
    UsageDaily::add(conn, deltas).await?;
    add_cost(conn, &monthly, &after, currency).await
}

/// Adds what `deltas` changed in the price of the rows they left as `after`
/// to each user's `total_cost`, inside the caller's transaction.
async fn add_cost(
    conn: &mut AsyncPgConnection,
    deltas: &[(MonthlyKey, UsageDelta)],
    after: &[Counters],
    currency: Currency,
) -> QueryResult<()> {
    let mut api_ids: Vec<i32> = deltas.iter().map(|(k, _)| k.api_id).collect();
    api_ids.sort_unstable();
    api_ids.dedup();
    let book = PriceBook::load(conn, Some(&api_ids)).await?;
    let amounts = cost_deltas(deltas, after, &book, currency);
    User::add_to_total_cost(conn, &amounts).await
}

/// Per user, what the batch added to their cost: for each touched record,
/// `price(after) − price(before)`, priced with the version in force for its
/// period. Prices are not linear (free calls, tiers), so it is the
/// difference, never the delta's own price. Sorted by user id.
fn cost_deltas(
    deltas: &[(MonthlyKey, UsageDelta)],
    after: &[Counters],
    book: &PriceBook,
    currency: Currency,
) -> Vec<(Uuid, Decimal)> {
    let mut per_user: BTreeMap<Uuid, Decimal> = BTreeMap::new();
    for row in after {
        let Some(period) = Period::from_first_day(row.period) else {
            continue;
        };
        let key = MonthlyKey {
            user_id: row.user_id,
            api_id: row.api_id,
            period,
        };
        let Ok(i) = deltas.binary_search_by(|(k, _)| k.cmp(&key)) else {
            continue;
        };
        let delta = deltas[i].1;
        let price = book.for_period_or_free(row.api_id, period, currency);
        let now = price_line(row.calls, row.failed_calls, &price).amount;
        let before = price_line(row.calls - delta.calls, row.failed_calls - delta.failed_calls, &price).amount;
        if now != before {
            *per_user.entry(row.user_id).or_default() += now - before;
        }
    }
    per_user.into_iter().collect()
}
