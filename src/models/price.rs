//! Price versions per API and the in-memory book the pricing function reads.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::domain::currency::UnknownCurrency;
use crate::domain::pricing::{PriceVersion, Tier};
use crate::domain::{Currency, Period};
use crate::schema::{price_tiers, prices};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = prices, check_for_backend(diesel::pg::Pg))]
pub struct PriceRow {
    pub id: i32,
    pub api_id: i32,
    pub effective_from: NaiveDate,
    pub currency: String,
    pub unit_price: Decimal,
    pub free_calls: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = price_tiers, check_for_backend(diesel::pg::Pg))]
struct TierRow {
    price_id: i32,
    up_to: Option<i64>,
    unit_price: Decimal,
}

#[derive(Insertable)]
#[diesel(table_name = prices)]
struct NewPrice<'a> {
    api_id: i32,
    effective_from: NaiveDate,
    currency: &'a str,
    unit_price: Decimal,
    free_calls: i64,
}

#[derive(Insertable)]
#[diesel(table_name = price_tiers)]
struct NewTier {
    price_id: i32,
    position: i32,
    up_to: Option<i64>,
    unit_price: Decimal,
}

/// Every price version of some APIs, ready to answer "which price applied
/// to this API in this period?".
#[derive(Debug, Default, Clone)]
pub struct PriceBook {
    /// Per API, versions sorted by `effective_from`.
    versions: HashMap<i32, Vec<(NaiveDate, PriceVersion)>>,
}

impl PriceBook {
    /// Loads the versions of `api_ids` (all APIs when `None`).
    pub async fn load(conn: &mut AsyncPgConnection, api_ids: Option<&[i32]>) -> QueryResult<PriceBook> {
        let mut query = prices::table.select(PriceRow::as_select()).into_boxed();
        if let Some(ids) = api_ids {
            query = query.filter(prices::api_id.eq_any(ids.to_vec()));
        }
        let rows: Vec<PriceRow> = query.order((prices::api_id, prices::effective_from)).load(conn).await?;
        let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
        let tiers: Vec<TierRow> = price_tiers::table
            .filter(price_tiers::price_id.eq_any(ids))
            .order((price_tiers::price_id, price_tiers::position))
            .select(TierRow::as_select())
            .load(conn)
            .await?;
        let mut tiers_by_price: HashMap<i32, Vec<Tier>> = HashMap::new();
        for t in tiers {
            tiers_by_price.entry(t.price_id).or_default().push(Tier {
                up_to: t.up_to,
                unit_price: t.unit_price,
            });
        }
        let mut book = PriceBook::default();
        for row in rows {
            let currency: Currency = row
                .currency
                .parse()
                .map_err(|e: UnknownCurrency| diesel::result::Error::DeserializationError(Box::new(e)))?;
            book.versions.entry(row.api_id).or_default().push((
                row.effective_from,
                PriceVersion {
                    currency,
                    unit_price: row.unit_price,
                    free_calls: row.free_calls,
                    tiers: tiers_by_price.remove(&row.id).unwrap_or_default(),
                },
            ));
        }
        Ok(book)
    }

    /// The version in force for `period`: the latest that starts on or before it.
    pub fn for_period(&self, api_id: i32, period: Period) -> Option<&PriceVersion> {
        let versions = self.versions.get(&api_id)?;
        let idx = versions.partition_point(|(from, _)| *from <= period.first_day());
        idx.checked_sub(1).map(|i| &versions[i].1)
    }

    /// Every version of an API, oldest first, with the day it starts.
    pub fn history(&self, api_id: i32) -> &[(NaiveDate, PriceVersion)] {
        self.versions.get(&api_id).map_or(&[], Vec::as_slice)
    }

    /// The latest version scheduled (in force now, or from a later period).
    pub fn latest(&self, api_id: i32) -> Option<&PriceVersion> {
        self.versions.get(&api_id)?.last().map(|(_, v)| v)
    }

    /// Like [`for_period`](Self::for_period), with a zero price when an API
    /// has no version yet (an API is free until it is priced).
    pub fn for_period_or_free(&self, api_id: i32, period: Period, currency: Currency) -> PriceVersion {
        self.for_period(api_id, period).cloned().unwrap_or(PriceVersion {
            currency,
            unit_price: Decimal::ZERO,
            free_calls: 0,
            tiers: Vec::new(),
        })
    }
}

impl PriceRow {
    /// Schedules `version` for `api_id` from `requested`, or from the next
    /// period if a call to the API was already recorded in `requested` — a
    /// price change never re-prices calls already made. The usage table is
    /// locked against meter flushes meanwhile, so "no calls recorded" stays
    /// true while the version is written. Returns the row and the period
    /// it takes effect from; `NotFound` for an unknown API.
    pub async fn schedule(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        requested: Period,
        version: &PriceVersion,
    ) -> QueryResult<(PriceRow, Period)> {
        use crate::models::usage::UsageRecord;
        use crate::schema::apis;
        conn.transaction(async |conn| {
            apis::table.find(api_id).select(apis::id).first::<i32>(conn).await?;
            UsageRecord::lock_against_flushes(conn).await?;
            let effective = if UsageRecord::any_in_period(conn, api_id, requested).await? {
                requested.next()
            } else {
                requested
            };
            let row = PriceRow::upsert(conn, api_id, effective, version).await?;
            Ok((row, effective))
        })
        .await
    }

    /// Writes a version effective from `period`, replacing one already
    /// scheduled for that same period (which, by the caller's check, has no
    /// calls priced under it yet).
    pub async fn upsert(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        period: Period,
        version: &PriceVersion,
    ) -> QueryResult<PriceRow> {
        let row: PriceRow = diesel::insert_into(prices::table)
            .values(NewPrice {
                api_id,
                effective_from: period.first_day(),
                currency: version.currency.code(),
                unit_price: version.unit_price,
                free_calls: version.free_calls,
            })
            .on_conflict((prices::api_id, prices::effective_from))
            .do_update()
            .set((
                prices::currency.eq(version.currency.code()),
                prices::unit_price.eq(version.unit_price),
                prices::free_calls.eq(version.free_calls),
                prices::created_at.eq(diesel::dsl::now),
            ))
            .returning(PriceRow::as_returning())
            .get_result(conn)
            .await?;
        diesel::delete(price_tiers::table.filter(price_tiers::price_id.eq(row.id)))
            .execute(conn)
            .await?;
        let tiers: Vec<NewTier> = version
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| NewTier {
                price_id: row.id,
                position: i32::try_from(i).unwrap_or(i32::MAX),
                up_to: t.up_to,
                unit_price: t.unit_price,
            })
            .collect();
        if !tiers.is_empty() {
            diesel::insert_into(price_tiers::table)
                .values(tiers)
                .execute(conn)
                .await?;
        }
        Ok(row)
    }
}
