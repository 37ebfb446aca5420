//! A meter flush as billing sees it: the counters move and every touched
//! user's `total_cost` moves with them, in one transaction, so the stored
//! total always equals the priced sum of the user's records.

use std::collections::BTreeMap;

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::pricing::price_line;
use crate::domain::{Currency, Period};
use crate::models::User;
use crate::models::price::PriceBook;
use crate::models::usage::{Counters, FlushId, UsageDelta, UsageKey, UsageRecord};

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Applied,
    /// The flush id was already recorded: an earlier attempt committed.
    AlreadyApplied,
}

/// Adds `deltas` (sorted, unique keys) to the usage records and the priced
/// difference to each user's `total_cost`. With a `flush` id the batch is
/// applied at most once however often it is retried.
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
        let after = UsageRecord::add(conn, deltas).await?;
        let mut api_ids: Vec<i32> = deltas.iter().map(|(k, _)| k.api_id).collect();
        api_ids.sort_unstable();
        api_ids.dedup();
        let book = PriceBook::load(conn, Some(&api_ids)).await?;
        let amounts = cost_deltas(deltas, &after, &book, currency);
        User::add_to_total_cost(conn, &amounts).await?;
        Ok(BatchOutcome::Applied)
    })
    .await
}

/// Per user, what the batch added to their cost: for each touched record,
/// `price(after) − price(before)`, priced with the version in force for its
/// period. Prices are not linear (free calls, tiers), so it is the
/// difference, never the delta's own price. Sorted by user id.
fn cost_deltas(
    deltas: &[(UsageKey, UsageDelta)],
    after: &[Counters],
    book: &PriceBook,
    currency: Currency,
) -> Vec<(Uuid, Decimal)> {
    let mut per_user: BTreeMap<Uuid, Decimal> = BTreeMap::new();
    for row in after {
        let Some(period) = Period::from_first_day(row.period) else {
            continue;
        };
        let key = UsageKey {
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
