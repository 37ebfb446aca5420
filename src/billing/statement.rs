//! What a user owes for one period, computed from the usage records and the
//! price versions in force — the same computation month close uses, so the
//! cost a user sees equals the invoice issued for it.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::pricing::{PricedLine, price_line};
use crate::domain::{Currency, Period};
use crate::models::price::PriceBook;
use crate::models::usage::{UsageLine, UsageRecord};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementLine {
    #[serde(skip)]
    pub api_id: i32,
    pub slug: String,
    #[serde(skip)]
    pub name: String,
    #[serde(flatten)]
    pub priced: PricedLine,
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
    /// Prices usage lines (one per API) with the versions in force for `period`.
    pub fn build(
        period: Period,
        currency: Currency,
        as_of: DateTime<Utc>,
        usage: &[UsageLine],
        book: &PriceBook,
    ) -> Self {
        let lines: Vec<StatementLine> = usage
            .iter()
            .map(|u| StatementLine {
                api_id: u.api_id,
                slug: u.slug.clone(),
                name: u.name.clone(),
                priced: price_line(
                    u.calls,
                    u.failed_calls,
                    &book.for_period_or_free(u.api_id, period, currency),
                ),
            })
            .collect();
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
        let usage = UsageRecord::for_user_period(conn, user_id, period).await?;
        let api_ids: Vec<i32> = usage.iter().map(|u| u.api_id).collect();
        let book = PriceBook::load(conn, Some(&api_ids)).await?;
        Ok(Self::build(period, currency, as_of, &usage, &book))
    }
}
