//! Price versions per API, each from an instant, and the in-memory book
//! that says which version was in force when a call arrived.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::domain::Currency;
use crate::domain::currency::UnknownCurrency;
use crate::domain::pricing::{PriceVersion, PriceView, Tier};
use crate::schema::{price_tiers, prices};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = prices, check_for_backend(diesel::pg::Pg))]
pub struct PriceRow {
    pub id: i32,
    pub api_id: i32,
    pub effective_from: DateTime<Utc>,
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
    effective_from: DateTime<Utc>,
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

/// `usage_prices.price_id` and `invoice_lines.price_id` for calls that
/// arrived while no version was in force (the API was free then).
pub const UNPRICED: i32 = 0;

/// One version of an API's price, as the book holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceEntry {
    pub id: i32,
    /// The first instant it prices (a whole second).
    pub effective_from: DateTime<Utc>,
    pub version: PriceVersion,
}

/// Every price version of some APIs, ready to answer "which price was in
/// force for this API when this call arrived?".
#[derive(Debug, Default, Clone)]
pub struct PriceBook {
    /// Per API, versions sorted by `effective_from`.
    versions: HashMap<i32, Vec<PriceEntry>>,
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
            book.versions.entry(row.api_id).or_default().push(PriceEntry {
                id: row.id,
                effective_from: row.effective_from,
                version: PriceVersion {
                    currency,
                    unit_price: row.unit_price,
                    free_calls: row.free_calls,
                    tiers: tiers_by_price.remove(&row.id).unwrap_or_default(),
                },
            });
        }
        Ok(book)
    }

    /// Each API's versions, oldest first.
    pub fn apis(&self) -> impl Iterator<Item = (i32, &[PriceEntry])> {
        self.versions.iter().map(|(api, versions)| (*api, versions.as_slice()))
    }

    /// The version in force at `instant`: the latest that starts at or before it.
    pub fn in_force_at(&self, api_id: i32, instant: DateTime<Utc>) -> Option<&PriceEntry> {
        let versions = self.versions.get(&api_id)?;
        let idx = versions.partition_point(|v| v.effective_from <= instant);
        idx.checked_sub(1).map(|i| &versions[i])
    }

    /// The id of the version in force during the Unix second `second`
    /// ([`UNPRICED`] when none was): versions start on whole seconds, so
    /// the whole second had one version.
    pub fn id_in_force_during(&self, api_id: i32, second: i64) -> i32 {
        let Some(versions) = self.versions.get(&api_id) else {
            return UNPRICED;
        };
        let idx = versions.partition_point(|v| v.effective_from.timestamp() <= second);
        idx.checked_sub(1).map_or(UNPRICED, |i| versions[i].id)
    }

    /// The version with this id, or a free price for [`UNPRICED`] (or an id
    /// the book does not hold: a row is never priced by a guess at a price).
    pub fn version_or_free(
        &self,
        api_id: i32,
        price_id: i32,
        currency: Currency,
    ) -> (Option<&PriceEntry>, PriceVersion) {
        match self
            .versions
            .get(&api_id)
            .and_then(|vs| vs.iter().find(|v| v.id == price_id))
        {
            Some(entry) => (Some(entry), entry.version.clone()),
            None => (None, PriceVersion::free(currency)),
        }
    }

    /// Every version of an API, oldest first.
    pub fn history(&self, api_id: i32) -> &[PriceEntry] {
        self.versions.get(&api_id).map_or(&[], Vec::as_slice)
    }

    /// The version scheduled last (in force now, or starting later).
    pub fn latest(&self, api_id: i32) -> Option<&PriceEntry> {
        self.versions.get(&api_id)?.last()
    }

    /// The first version that starts after `instant`, if one is scheduled.
    pub fn next_after(&self, api_id: i32, instant: DateTime<Utc>) -> Option<&PriceEntry> {
        let versions = self.versions.get(&api_id)?;
        versions.get(versions.partition_point(|v| v.effective_from <= instant))
    }
}

impl PriceEntry {
    pub fn view(&self) -> PriceView {
        PriceView::new(self.effective_from, &self.version)
    }

    /// Where this version stands at `now`, given the one in force then.
    pub fn status(&self, in_force: Option<&PriceEntry>, now: DateTime<Utc>) -> PriceStatus {
        if self.effective_from > now {
            PriceStatus::Scheduled
        } else if in_force.is_some_and(|e| e.id == self.id) {
            PriceStatus::InForce
        } else {
            PriceStatus::Superseded
        }
    }
}

/// Where a price version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceStatus {
    /// Starts later; may be cancelled until shortly before it starts.
    Scheduled,
    /// Prices the calls arriving now.
    InForce,
    /// Followed by a version that has started.
    Superseded,
}

/// Why a version could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no price version with this id for this API")]
    NotFound,
    /// It starts within the notice, has started, or has priced calls.
    #[error("this price version has started (or starts within 2 s); schedule a new one instead")]
    Started,
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

impl PriceRow {
    /// Schedules `version` for `api_id` from `start` (which the caller has
    /// checked is far enough ahead: no call can have been priced by a version
    /// starting then), replacing a version scheduled for that same instant.
    /// `NotFound` for an unknown API.
    pub async fn schedule(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        start: DateTime<Utc>,
        version: &PriceVersion,
    ) -> QueryResult<PriceRow> {
        use crate::schema::apis;
        conn.transaction(async |conn| {
            apis::table.find(api_id).select(apis::id).first::<i32>(conn).await?;
            PriceRow::upsert(conn, api_id, start, version).await
        })
        .await
    }

    /// Removes a version of `api_id` that starts after `started_by` and has
    /// priced no call (`usage_prices` refers to it by key: a version a flush
    /// has used cannot be deleted, whatever the clocks said).
    pub async fn cancel(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        price_id: i32,
        started_by: DateTime<Utc>,
    ) -> Result<(), CancelError> {
        use diesel::result::{DatabaseErrorKind, Error};
        let mine = prices::table
            .filter(prices::id.eq(price_id))
            .filter(prices::api_id.eq(api_id));
        match diesel::delete(mine.filter(prices::effective_from.gt(started_by)))
            .execute(conn)
            .await
        {
            Ok(1) => Ok(()),
            Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => Err(CancelError::Started),
            Err(e) => Err(e.into()),
            Ok(_) => {
                let exists: bool = diesel::select(diesel::dsl::exists(mine)).get_result(conn).await?;
                Err(if exists {
                    CancelError::Started
                } else {
                    CancelError::NotFound
                })
            }
        }
    }

    /// Writes a version effective from `start`, replacing one already
    /// scheduled for that same instant (which, by the caller's check, has
    /// not started).
    pub async fn upsert(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        start: DateTime<Utc>,
        version: &PriceVersion,
    ) -> QueryResult<PriceRow> {
        let row: PriceRow = diesel::insert_into(prices::table)
            .values(NewPrice {
                api_id,
                effective_from: start,
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
