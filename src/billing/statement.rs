//! What a user owes for one period, computed from the usage per price
//! version the calls arrived under — the same computation month close and
//! every meter flush use, so the cost a user sees equals the invoice issued
//! for it.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::pricing::{PriceVersion, PricedLine, price_month};
use crate::domain::{Currency, Period};
use crate::models::price::PriceBook;
use crate::models::usage::{UsagePrice, VersionUsage};

/// One line: a user's calls to one API in one period that arrived under one
/// price version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    #[serde(skip)]
    pub api_id: i32,
    pub slug: String,
    #[serde(skip)]
    pub name: String,
    /// The price version these calls arrived under; 0 when none was in
    /// force (the API was free then).
    pub price_id: i32,
    /// When that version started; `null` when none was in force.
    pub price_effective_from: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub priced: PricedLine,
}

/// The calls of one (user, API, period) under one price version.
#[derive(Debug, Clone, Copy)]
pub struct VersionCalls {
    pub price_id: i32,
    pub calls: i64,
    pub failed_calls: i64,
}

/// One version's line of a (user, API, period), priced.
#[derive(Debug, Clone, Copy)]
pub struct PricedVersion {
    pub price_id: i32,
    pub effective_from: Option<DateTime<Utc>>,
    pub priced: PricedLine,
}

/// Prices the version rows of one (user, API, period) — what every cost
/// figure (statements, invoices, `users.total_cost`) is made of: the rows
/// ordered by when their versions started (calls under no version came
/// first: a version, once in force, is followed only by later ones), then
/// `price_month`. A version the book does not hold prices nothing.
pub fn price_versions(api_id: i32, rows: &[VersionCalls], book: &PriceBook, currency: Currency) -> Vec<PricedVersion> {
    let mut ordered: Vec<(Option<DateTime<Utc>>, VersionCalls, PriceVersion)> = rows
        .iter()
        .map(|r| {
            let (entry, version) = book.version_or_free(api_id, r.price_id, currency);
            (entry.map(|e| e.effective_from), *r, version)
        })
        .collect();
    ordered.sort_by_key(|(from, r, _)| (*from, r.price_id));
    let priced = price_month(ordered.iter().map(|(_, r, v)| (r.calls, r.failed_calls, v)));
    ordered
        .iter()
        .zip(priced)
        .map(|((from, r, _), priced)| PricedVersion {
            price_id: r.price_id,
            effective_from: *from,
            priced,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Statement {
    pub period: Period,
    pub currency: Currency,
    pub as_of: DateTime<Utc>,
    pub lines: Vec<StatementLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

impl Statement {
    /// Prices usage rows (one per API and version, an API's rows
    /// together): one line per API and version, each API's versions in the
    /// order they started.
    pub fn build(
        period: Period,
        currency: Currency,
        as_of: DateTime<Utc>,
        usage: &[VersionUsage],
        book: &PriceBook,
    ) -> Self {
        let mut lines: Vec<StatementLine> = Vec::with_capacity(usage.len());
        for api_rows in usage.chunk_by(|a, b| a.api_id == b.api_id) {
            let first = &api_rows[0];
            let rows: Vec<VersionCalls> = api_rows
                .iter()
                .map(|u| VersionCalls {
                    price_id: u.price_id,
                    calls: u.calls,
                    failed_calls: u.failed_calls,
                })
                .collect();
            for v in price_versions(first.api_id, &rows, book, currency) {
                lines.push(StatementLine {
                    api_id: first.api_id,
                    slug: first.slug.clone(),
                    name: first.name.clone(),
                    price_id: v.price_id,
                    price_effective_from: v.effective_from,
                    priced: v.priced,
                });
            }
        }
        let subtotal: Decimal = lines.iter().map(|l| l.priced.amount).sum();
        Self {
            period,
            currency,
            as_of,
            lines,
            subtotal,
            // No taxes or discounts yet: the total is the sum of the lines.
            total: subtotal,
        }
    }

    /// Calls that will be charged for (after failures and free allowances).
    pub fn charged_calls(&self) -> i64 {
        self.lines.iter().map(|l| l.priced.charged_calls).sum()
    }

    pub async fn for_user(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        period: Period,
        currency: Currency,
        as_of: DateTime<Utc>,
    ) -> QueryResult<Statement> {
        let usage = UsagePrice::for_user_period(conn, user_id, period).await?;
        let api_ids: Vec<i32> = usage.iter().map(|u| u.api_id).collect();
        let book = PriceBook::load(conn, Some(&api_ids)).await?;
        Ok(Self::build(period, currency, as_of, &usage, &book))
    }
}
