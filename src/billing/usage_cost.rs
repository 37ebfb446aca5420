//! A meter flush as billing sees it: the counters move (each period's row,
//! the row of each price version its calls arrived under, and each day's
//! row) and every touched user's `total_cost` moves with them, in one
//! transaction, so the stored total always equals the priced sum of the
//! user's records, and a period's versions and days add up to it.

use std::collections::BTreeMap;

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::billing::statement::{VersionCalls, price_versions};
use crate::billing::{alerts, caps, credits};
use crate::domain::{Currency, Period};
use crate::models::User;
use crate::models::price::PriceBook;
use crate::models::usage::{
    FlushId, MonthlyKey, PricedKey, UsageDaily, UsageDelta, UsageKey, UsagePrice, UsageRecord, VersionCounters, by_day,
    by_period,
};

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
        add_priced(conn, deltas, currency, flush.map(|f| f.instance_id)).await?;
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
                    // Never counted: what the calls reserved is released now.
                    let failed = UsageDelta {
                        calls: d.calls,
                        failed_calls: d.calls,
                        reserved: d.reserved,
                    };
                    (*k, failed)
                })
                .collect();
            add_priced(conn, &as_failed, currency, Some(original.instance_id)).await?;
            return Ok(Settlement::AppliedAsFailed);
        }
        let moved: Vec<_> = deltas
            .iter()
            .filter(|(_, d)| d.calls > d.failed_calls)
            .map(|(k, d)| {
                // The group's commit released what its calls reserved.
                let delta = UsageDelta {
                    calls: 0,
                    failed_calls: d.calls - d.failed_calls,
                    reserved: Decimal::ZERO,
                };
                (*k, delta)
            })
            .collect();
        if !moved.is_empty() {
            // The same calls move in the period rows, in the rows of the
            // versions that priced them, and in the day rows — in that
            // (lock) order, as a flush writes them.
            let book = book_for(conn, &moved).await?;
            let failed_only = |d: &UsageDelta| d.failed_calls;
            let monthly: Vec<_> = by_period(&moved).iter().map(|(k, d)| (*k, failed_only(d))).collect();
            UsageRecord::move_to_failed(conn, &monthly).await?;
            let priced = by_price(&moved, &book);
            let priced_moved: Vec<_> = priced.iter().map(|(k, d)| (*k, failed_only(d))).collect();
            UsagePrice::move_to_failed(conn, &priced_moved).await?;
            let daily: Vec<_> = by_day(&moved).iter().map(|(k, d)| (*k, failed_only(d))).collect();
            UsageDaily::move_to_failed(conn, &daily).await?;
            add_cost(conn, &priced, &book, currency).await?;
        }
        Ok(Settlement::Compensated)
    })
    .await
}

/// The counter upserts — per period, per price version in force when the
/// calls arrived, then per day — and the priced difference on each user's
/// total, inside the caller's transaction. Each call's version is resolved
/// here from the second it arrived in, by the versions this transaction
/// reads: a version starts at least `PRICE_NOTICE` after it was scheduled,
/// and a call is flushed after it arrived, so every version that could
/// price a call of this batch is already there. Prices apply to the
/// version rows; the period rows and the days only count. Last, what the
/// calls reserved against spending caps is released from the leases of
/// `instance` (the one that admitted them): counted usage and held budget
/// change in the same commit.
async fn add_priced(
    conn: &mut AsyncPgConnection,
    deltas: &[(UsageKey, UsageDelta)],
    currency: Currency,
    instance: Option<Uuid>,
) -> QueryResult<()> {
    let book = book_for(conn, deltas).await?;
    UsageRecord::add(conn, &by_period(deltas)).await?;
    let priced = by_price(deltas, &book);
    UsagePrice::add(conn, &priced).await?;
    UsageDaily::add(conn, &by_day(deltas)).await?;
    add_cost(conn, &priced, &book, currency).await?;
    if let Some(instance) = instance {
        caps::release_reserved(conn, instance, deltas).await?;
    }
    Ok(())
}

/// The price versions of the APIs `deltas` count calls to.
async fn book_for(conn: &mut AsyncPgConnection, deltas: &[(UsageKey, UsageDelta)]) -> QueryResult<PriceBook> {
    let mut api_ids: Vec<i32> = deltas.iter().map(|(k, _)| k.api_id).collect();
    api_ids.sort_unstable();
    api_ids.dedup();
    PriceBook::load(conn, Some(&api_ids)).await
}

/// `deltas` merged per (user, API, period, version in force during the
/// second each call arrived in): sorted and unique.
fn by_price(deltas: &[(UsageKey, UsageDelta)], book: &PriceBook) -> Vec<(PricedKey, UsageDelta)> {
    let mut priced: BTreeMap<PricedKey, UsageDelta> = BTreeMap::new();
    for (key, delta) in deltas {
        let priced_key = PricedKey {
            user_id: key.user_id,
            api_id: key.api_id,
            period: key.period(),
            price_id: book.id_in_force_during(key.api_id, key.second),
        };
        priced.entry(priced_key).or_default().add(*delta);
    }
    priced.into_iter().collect()
}

/// Adds what `deltas` changed in the price of their (user, API, period)s to
/// each user's `total_cost`, inside the caller's transaction, after the
/// upserts; draws on credit, and emits the alerts the changes set off.
async fn add_cost(
    conn: &mut AsyncPgConnection,
    deltas: &[(PricedKey, UsageDelta)],
    book: &PriceBook,
    currency: Currency,
) -> QueryResult<()> {
    let mut records: Vec<MonthlyKey> = deltas.iter().map(|(k, _)| k.monthly()).collect();
    records.dedup();
    let after = UsagePrice::of_records(conn, &records).await?;
    let changes = cost_deltas(deltas, &after, book, currency);
    let mut per_user: Vec<(Uuid, Decimal)> = Vec::new();
    for ((user_id, _), change) in &changes {
        match per_user.last_mut() {
            Some((last, sum)) if last == user_id => *sum += *change,
            _ => per_user.push((*user_id, *change)),
        }
    }
    let balances = User::add_to_total_cost(conn, &per_user).await?;
    // Most flushes touch no one with credit, and take nothing back: no
    // further statement for them.
    let may_draw = balances.iter().any(|(_, balance)| *balance > Decimal::ZERO)
        || changes.iter().any(|(_, change)| *change < Decimal::ZERO);
    let drawn_down = if may_draw {
        credits::draw_for_usage(conn, &changes, currency).await?
    } else {
        Vec::new()
    };
    alerts::after_flush(conn, &changes, &drawn_down, currency).await
}

/// Per (user, period), what the batch added to its cost: for each touched
/// (user, API, period), the price of all its version rows as they are now
/// minus their price without `deltas`. Prices are not linear (free calls,
/// tiers, and a later version's calls numbered after an earlier one's), so
/// it is the difference of the whole record, never the delta's own price.
/// Sorted by user id, then period.
fn cost_deltas(
    deltas: &[(PricedKey, UsageDelta)],
    after: &[VersionCounters],
    book: &PriceBook,
    currency: Currency,
) -> Vec<((Uuid, Period), Decimal)> {
    let mut records: BTreeMap<MonthlyKey, (Vec<VersionCalls>, Vec<VersionCalls>)> = BTreeMap::new();
    for row in after {
        let Some(period) = Period::from_first_day(row.period) else {
            continue;
        };
        let key = PricedKey {
            user_id: row.user_id,
            api_id: row.api_id,
            period,
            price_id: row.price_id,
        };
        let delta = deltas
            .binary_search_by(|(k, _)| k.cmp(&key))
            .map_or(UsageDelta::default(), |i| deltas[i].1);
        let (now, before) = records.entry(key.monthly()).or_default();
        now.push(VersionCalls {
            price_id: row.price_id,
            calls: row.calls,
            failed_calls: row.failed_calls,
        });
        before.push(VersionCalls {
            price_id: row.price_id,
            calls: row.calls - delta.calls,
            failed_calls: row.failed_calls - delta.failed_calls,
        });
    }
    let mut per_period: BTreeMap<(Uuid, Period), Decimal> = BTreeMap::new();
    for (key, (now, before)) in records {
        let amount = |rows: &[VersionCalls]| -> Decimal {
            price_versions(key.api_id, rows, book, currency)
                .iter()
                .map(|l| l.priced.amount)
                .sum()
        };
        let change = amount(&now) - amount(&before);
        if !change.is_zero() {
            *per_period.entry((key.user_id, key.period)).or_default() += change;
        }
    }
    per_period.into_iter().collect()
}
