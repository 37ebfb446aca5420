//! Month close: one invoice per user with charged usage in a period,
//! numbered gaplessly per year, issued once however many instances try.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::billing::statement::Statement;
use crate::billing::{Currency, Period};
use crate::config::BillingSettings;
use crate::models::User;
use crate::models::invoice::{Invoice, InvoiceLine, InvoiceStatus};
use crate::models::price::PriceBook;
use crate::models::usage::{UsageLine, UsageRecord};
use crate::schema::{closed_periods, invoice_lines, invoice_sequences, invoices, usage_records, users};

/// Serialises closes across instances (held for the closing transaction).
const CLOSE_LOCK_KEY: i64 = 0x7061_7967_636c_6f73; // "paygclos"

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CloseOutcome {
    pub period: Period,
    /// True when the period had been closed before: nothing new was issued.
    pub already_closed: bool,
    pub invoices_issued: i32,
    pub closed_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("period {0} has not ended yet")]
    PeriodOpen(Period),
    #[error(transparent)]
    Database(#[from] DieselError),
    #[error("no database connection: {0}")]
    Unavailable(#[from] crate::db::PoolError),
}

/// A formatted invoice number: `INV-2026-000001`.
pub fn invoice_number(year: i32, n: i64) -> String {
    format!("INV-{year:04}-{n:06}")
}

/// Closes `period` (which must have ended in `tz`): issues the invoices and
/// records the period as closed, all in one transaction under an advisory
/// lock. Closing again returns the first close's outcome.
pub async fn close_period(
    conn: &mut AsyncPgConnection,
    period: Period,
    now: DateTime<Utc>,
    tz: Tz,
    settings: &BillingSettings,
) -> Result<CloseOutcome, CloseError> {
    if period >= Period::containing(now, tz) {
        return Err(CloseError::PeriodOpen(period));
    }
    let currency = settings.currency;
    let due_at = now + chrono::Duration::days(i64::from(settings.invoice_due_days));
    let year = now.with_timezone(&tz).year();
    let outcome = conn
        .transaction::<_, DieselError, _>(async |conn| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<BigInt, _>(CLOSE_LOCK_KEY)
                .execute(conn)
                .await?;
            let existing: Option<(DateTime<Utc>, i32)> = closed_periods::table
                .find(period.first_day())
                .select((closed_periods::closed_at, closed_periods::invoices_issued))
                .first(conn)
                .await
                .optional()?;
            if let Some((closed_at, invoices_issued)) = existing {
                return Ok(CloseOutcome {
                    period,
                    already_closed: true,
                    invoices_issued,
                    closed_at,
                });
            }

            let statements = statements_for_period(conn, period, currency, now).await?;
            let billed: Vec<(Uuid, Statement)> =
                statements.into_iter().filter(|(_, s)| s.charged_calls() > 0).collect();
            let user_ids: Vec<Uuid> = billed.iter().map(|(u, _)| *u).collect();
            let people: HashMap<Uuid, User> = users::table
                .filter(users::id.eq_any(&user_ids))
                .select(User::as_select())
                .load(conn)
                .await?
                .into_iter()
                .map(|u| (u.id, u))
                .collect();

            let count = i32::try_from(billed.len()).unwrap_or(i32::MAX);
            let first_number = reserve_numbers(conn, year, count).await?;
            let mut new_invoices = Vec::with_capacity(billed.len());
            let mut new_lines = Vec::new();
            for (i, (user_id, statement)) in billed.into_iter().enumerate() {
                let Some(user) = people.get(&user_id) else {
                    continue;
                };
                let id = Uuid::new_v4();
                // Nothing to pay (e.g. everything rounded to 0.00): settled at issue.
                let settled = statement.total.is_zero();
                new_invoices.push(Invoice {
                    id,
                    number: invoice_number(year, first_number + i64::try_from(i).unwrap_or(0)),
                    user_id,
                    period: period.first_day(),
                    currency: currency.code().to_owned(),
                    subtotal: statement.subtotal,
                    total: statement.total,
                    amount_paid: Decimal::ZERO,
                    status: if settled {
                        InvoiceStatus::Paid
                    } else {
                        InvoiceStatus::Issued
                    },
                    issued_at: now,
                    due_at,
                    paid_at: settled.then_some(now),
                    voided_at: None,
                    billing_email: user.email.clone(),
                    billing_name: user.name.clone(),
                    billing_company: user.company.clone(),
                    billing_address_line1: user.address_line1.clone(),
                    billing_address_line2: user.address_line2.clone(),
                    billing_city: user.city.clone(),
                    billing_postal_code: user.postal_code.clone(),
                    billing_country: user.country.clone(),
                    billing_tax_id: user.tax_id.clone(),
                });
                for (position, line) in statement.lines.into_iter().enumerate() {
                    new_lines.push(InvoiceLine {
                        invoice_id: id,
                        position: i32::try_from(position).unwrap_or(i32::MAX),
                        api_id: line.api_id,
                        api_slug: line.slug,
                        api_name: line.name,
                        calls: line.priced.calls,
                        failed_calls: line.priced.failed_calls,
                        billable_calls: line.priced.billable_calls,
                        free_calls: line.priced.free_calls,
                        charged_calls: line.priced.charged_calls,
                        unit_price: line.priced.unit_price,
                        amount: line.priced.amount,
                    });
                }
            }
            // Multi-row inserts, chunked under PostgreSQL's 65,535 parameters.
            for chunk in new_invoices.chunks(1_000) {
                diesel::insert_into(invoices::table).values(chunk).execute(conn).await?;
            }
            for chunk in new_lines.chunks(4_000) {
                diesel::insert_into(invoice_lines::table)
                    .values(chunk)
                    .execute(conn)
                    .await?;
            }
            let issued = i32::try_from(new_invoices.len()).unwrap_or(i32::MAX);
            diesel::insert_into(closed_periods::table)
                .values((
                    closed_periods::period.eq(period.first_day()),
                    closed_periods::closed_at.eq(now),
                    closed_periods::invoices_issued.eq(issued),
                ))
                .execute(conn)
                .await?;
            Ok(CloseOutcome {
                period,
                already_closed: false,
                invoices_issued: issued,
                closed_at: now,
            })
        })
        .await?;
    if !outcome.already_closed {
        tracing::info!(period = %period, invoices = outcome.invoices_issued, "period closed");
    }
    Ok(outcome)
}

/// Takes `count` consecutive numbers from the year's sequence; returns the
/// first. Inside the closing transaction, so a rollback returns them: no gaps.
async fn reserve_numbers(conn: &mut AsyncPgConnection, year: i32, count: i32) -> QueryResult<i64> {
    if count == 0 {
        return Ok(1);
    }
    let last: i32 = diesel::insert_into(invoice_sequences::table)
        .values((
            invoice_sequences::year.eq(year),
            invoice_sequences::last_number.eq(count),
        ))
        .on_conflict(invoice_sequences::year)
        .do_update()
        .set(invoice_sequences::last_number.eq(invoice_sequences::last_number + count))
        .returning(invoice_sequences::last_number)
        .get_result(conn)
        .await?;
    Ok(i64::from(last) - i64::from(count) + 1)
}

/// Every user's statement for a period, from the records as they are now.
pub async fn statements_for_period(
    conn: &mut AsyncPgConnection,
    period: Period,
    currency: Currency,
    as_of: DateTime<Utc>,
) -> QueryResult<BTreeMap<Uuid, Statement>> {
    let rows = UsageRecord::lines_for_period(conn, period).await?;
    let book = PriceBook::load(conn, None).await?;
    let mut by_user: BTreeMap<Uuid, Vec<UsageLine>> = BTreeMap::new();
    for (user_id, line) in rows {
        by_user.entry(user_id).or_default().push(line);
    }
    Ok(by_user
        .into_iter()
        .map(|(user_id, lines)| (user_id, Statement::build(period, currency, as_of, &lines, &book)))
        .collect())
}

pub async fn is_closed(conn: &mut AsyncPgConnection, period: Period) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(closed_periods::table.find(period.first_day())))
        .get_result(conn)
        .await
}

/// One (user, API) whose records no longer match what was invoiced.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Discrepancy {
    pub user_id: Uuid,
    pub email: String,
    pub invoice_number: Option<String>,
    pub slug: String,
    pub recorded_calls: i64,
    pub invoiced_calls: i64,
    pub recorded_failed_calls: i64,
    pub invoiced_failed_calls: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub recorded_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unbilled_amount: Decimal,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    pub period: Period,
    pub closed: bool,
    pub closed_at: Option<DateTime<Utc>>,
    pub currency: Currency,
    pub invoices: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub invoiced_total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub recorded_total: Decimal,
    /// Recorded minus invoiced: usage that arrived after the close.
    #[serde(with = "rust_decimal::serde::str")]
    pub unbilled_total: Decimal,
    pub discrepancies: Vec<Discrepancy>,
}

/// Compares a period's usage records (priced now) with its invoices.
pub async fn reconcile(
    conn: &mut AsyncPgConnection,
    period: Period,
    currency: Currency,
    now: DateTime<Utc>,
) -> QueryResult<Reconciliation> {
    let closed_at: Option<DateTime<Utc>> = closed_periods::table
        .find(period.first_day())
        .select(closed_periods::closed_at)
        .first(conn)
        .await
        .optional()?;
    let statements = statements_for_period(conn, period, currency, now).await?;
    let invoiced: Vec<(Uuid, String, InvoiceLine)> = invoices::table
        .inner_join(invoice_lines::table)
        .filter(invoices::period.eq(period.first_day()))
        .filter(invoices::status.ne(InvoiceStatus::Void))
        .select((invoices::user_id, invoices::number, InvoiceLine::as_select()))
        .load(conn)
        .await?;
    let invoice_count = invoiced
        .iter()
        .map(|(_, n, _)| n)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut by_key: HashMap<(Uuid, String), (String, InvoiceLine)> = HashMap::new();
    for (user_id, number, line) in invoiced {
        by_key.insert((user_id, line.api_slug.clone()), (number, line));
    }
    let mut emails: HashMap<Uuid, String> = users::table
        .filter(users::id.eq_any(statements.keys().copied().collect::<Vec<_>>()))
        .select((users::id, users::email))
        .load::<(Uuid, String)>(conn)
        .await?
        .into_iter()
        .collect();

    let mut discrepancies = Vec::new();
    let mut recorded_total = Decimal::ZERO;
    let mut invoiced_total = Decimal::ZERO;
    for (user_id, statement) in &statements {
        for line in &statement.lines {
            recorded_total += line.priced.amount;
            let invoiced = by_key.remove(&(*user_id, line.slug.clone()));
            let (number, inv_calls, inv_failed, inv_amount) = match &invoiced {
                Some((n, l)) => (Some(n.clone()), l.calls, l.failed_calls, l.amount),
                None => (None, 0, 0, Decimal::ZERO),
            };
            invoiced_total += inv_amount;
            if inv_calls != line.priced.calls || inv_failed != line.priced.failed_calls {
                discrepancies.push(Discrepancy {
                    user_id: *user_id,
                    email: emails.remove(user_id).unwrap_or_default(),
                    invoice_number: number,
                    slug: line.slug.clone(),
                    recorded_calls: line.priced.calls,
                    invoiced_calls: inv_calls,
                    recorded_failed_calls: line.priced.failed_calls,
                    invoiced_failed_calls: inv_failed,
                    recorded_amount: line.priced.amount,
                    invoiced_amount: inv_amount,
                    unbilled_amount: line.priced.amount - inv_amount,
                });
            }
        }
    }
    // Invoiced lines whose records vanished cannot happen (records only grow),
    // but count them so the totals stay honest.
    invoiced_total += by_key.values().map(|(_, l)| l.amount).sum::<Decimal>();
    Ok(Reconciliation {
        period,
        closed: closed_at.is_some(),
        closed_at,
        currency,
        invoices: i64::try_from(invoice_count).unwrap_or(i64::MAX),
        invoiced_total,
        recorded_total,
        unbilled_total: recorded_total - invoiced_total,
        discrepancies,
    })
}

/// Periods with usage that ended at least `grace` ago and are not closed.
pub async fn periods_due_for_close(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    tz: Tz,
    grace: Duration,
) -> QueryResult<Vec<Period>> {
    let current = Period::containing(now, tz);
    let candidates: Vec<NaiveDate> = usage_records::table
        .filter(usage_records::period.lt(current.first_day()))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            closed_periods::table.filter(closed_periods::period.eq(usage_records::period)),
        )))
        .select(usage_records::period)
        .distinct()
        .order(usage_records::period)
        .load(conn)
        .await?;
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    Ok(candidates
        .into_iter()
        .filter_map(Period::from_first_day)
        .filter(|p| p.ends_at(tz) + grace <= now)
        .collect())
}

/// Closes ended periods `PAYG_CLOSE_GRACE` after they end, checking every
/// minute. Safe on every instance at once: closing is locked and idempotent.
pub fn spawn_scheduler(
    state: actix_web::web::Data<AppState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = close_due_periods(&state).await {
                tracing::warn!(error = %e, "scheduled period close failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

pub async fn close_due_periods(state: &AppState) -> anyhow::Result<Vec<CloseOutcome>> {
    let due = {
        let mut conn = state.db.get().await?;
        periods_due_for_close(
            &mut conn,
            state.now(),
            state.config.billing_tz,
            state.config.billing.close_grace,
        )
        .await?
    };
    let mut outcomes = Vec::new();
    for period in due {
        outcomes.push(state.close_period(period).await?);
    }
    Ok(outcomes)
}
