//! Month close: one invoice per user with charged usage in a period,
//! numbered gaplessly per year, issued once however many instances try.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use diesel::QueryResult;
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::billing::statement::Statement;
use crate::config::BillingSettings;
use crate::domain::pricing::PricedLine;
use crate::domain::webhook::{EventType, NewEvent};
use crate::domain::{Currency, Period};
use crate::models::User;
use crate::models::credit::CreditMovement;
use crate::models::invoice::{ClosedPeriod, Invoice, InvoiceLine, InvoiceStatus};
use crate::models::price::PriceBook;
use crate::models::usage::{UsagePrice, UsageRecord, VersionUsage};
use crate::models::webhook::{Outbox, invoice_facts};

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
            ClosedPeriod::lock_for_close(conn).await?;
            // Flushes drawing credit for this period finish first, or wait.
            ClosedPeriod::lock_period_for_close(conn, period).await?;
            if let Some(closed) = ClosedPeriod::find(conn, period).await? {
                return Ok(CloseOutcome {
                    period,
                    already_closed: true,
                    invoices_issued: closed.invoices_issued,
                    closed_at: closed.closed_at,
                });
            }

            let statements = statements_for_period(conn, period, currency, now).await?;
            let billed: Vec<(Uuid, Statement)> =
                statements.into_iter().filter(|(_, s)| s.charged_calls() > 0).collect();
            let user_ids: Vec<Uuid> = billed.iter().map(|(u, _)| *u).collect();
            let people: HashMap<Uuid, User> = User::find_many(conn, &user_ids)
                .await?
                .into_iter()
                .map(|u| (u.id, u))
                .collect();

            let drawn = CreditMovement::drawn_in_period(conn, period).await?;
            let count = i32::try_from(billed.len()).unwrap_or(i32::MAX);
            let first_number = Invoice::reserve_numbers(conn, year, count).await?;
            let mut new_invoices = Vec::with_capacity(billed.len());
            let mut new_lines = Vec::new();
            for (i, (user_id, statement)) in billed.into_iter().enumerate() {
                let Some(user) = people.get(&user_id) else {
                    continue;
                };
                let id = Uuid::new_v4();
                // What the period's usage drew from prepaid credit pays for
                // it first (it never drew more than it was charged).
                let credit_applied = drawn.get(&user_id).copied().unwrap_or_default().min(statement.total);
                // Nothing to pay (everything rounded to 0.00, or credit paid
                // it all): settled at issue.
                let settled = statement.total == credit_applied;
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
                    credit_applied,
                    amount_due: statement.total - credit_applied,
                });
                for (position, line) in statement.lines.into_iter().enumerate() {
                    new_lines.push(InvoiceLine {
                        invoice_id: id,
                        position: i32::try_from(position).unwrap_or(i32::MAX),
                        api_id: line.api_id,
                        api_slug: line.slug,
                        api_name: line.name,
                        price_id: line.price_id,
                        price_effective_from: line.price_effective_from,
                        priced: line.priced,
                    });
                }
            }
            Invoice::insert_all(conn, &new_invoices, &new_lines).await?;
            // Each invoice's events in the close's transaction: issued, and
            // paid at once when credit (or rounding to zero) settled it.
            let events: Vec<NewEvent> = new_invoices
                .iter()
                .flat_map(|invoice| {
                    let facts = invoice_facts(invoice);
                    let paid = (invoice.status == InvoiceStatus::Paid)
                        .then(|| NewEvent::invoice(EventType::InvoicePaid, &facts));
                    std::iter::once(NewEvent::invoice(EventType::InvoiceIssued, &facts)).chain(paid)
                })
                .collect();
            Outbox::emit(conn, &events, now).await?;
            let issued = i32::try_from(new_invoices.len()).unwrap_or(i32::MAX);
            ClosedPeriod::insert(
                conn,
                &ClosedPeriod {
                    period: period.first_day(),
                    closed_at: now,
                    invoices_issued: issued,
                },
            )
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

/// Every user's statement for a period, from the records as they are now.
pub async fn statements_for_period(
    conn: &mut AsyncPgConnection,
    period: Period,
    currency: Currency,
    as_of: DateTime<Utc>,
) -> QueryResult<BTreeMap<Uuid, Statement>> {
    let rows = UsagePrice::lines_for_period(conn, period).await?;
    let book = PriceBook::load(conn, None).await?;
    let mut by_user: BTreeMap<Uuid, Vec<VersionUsage>> = BTreeMap::new();
    for (user_id, line) in rows {
        by_user.entry(user_id).or_default().push(line);
    }
    Ok(by_user
        .into_iter()
        .map(|(user_id, lines)| (user_id, Statement::build(period, currency, as_of, &lines, &book)))
        .collect())
}

/// One (user, API) whose records no longer match what was invoiced: the
/// line as the records price now, and the line as invoiced (none if the
/// user had no invoice line for that API).
#[derive(Debug, Clone)]
pub struct Discrepancy {
    pub user_id: Uuid,
    pub email: String,
    pub invoice_number: Option<String>,
    pub slug: String,
    /// The price version of the line (0: none was in force).
    pub price_id: i32,
    pub price_effective_from: Option<DateTime<Utc>>,
    pub recorded: PricedLine,
    pub invoiced: Option<PricedLine>,
}

/// How a [`Discrepancy`] is shown: the two lines' counts and amounts side
/// by side, and what is not billed yet.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Discrepancy)]
struct DiscrepancyView<'a> {
    user_id: Uuid,
    email: &'a str,
    invoice_number: Option<&'a str>,
    slug: &'a str,
    /// The price version the calls arrived under (0: none was in force).
    price_id: i32,
    /// When that version started.
    price_effective_from: Option<DateTime<Utc>>,
    recorded_calls: i64,
    invoiced_calls: i64,
    recorded_failed_calls: i64,
    invoiced_failed_calls: i64,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    recorded_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    invoiced_amount: Decimal,
    /// Recorded minus invoiced.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    unbilled_amount: Decimal,
}

impl Serialize for Discrepancy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let invoiced = self.invoiced.unwrap_or(PricedLine::NONE);
        DiscrepancyView {
            user_id: self.user_id,
            email: &self.email,
            invoice_number: self.invoice_number.as_deref(),
            slug: &self.slug,
            price_id: self.price_id,
            price_effective_from: self.price_effective_from,
            recorded_calls: self.recorded.calls,
            invoiced_calls: invoiced.calls,
            recorded_failed_calls: self.recorded.failed_calls,
            invoiced_failed_calls: invoiced.failed_calls,
            recorded_amount: self.recorded.amount,
            invoiced_amount: invoiced.amount,
            unbilled_amount: self.recorded.amount - invoiced.amount,
        }
        .serialize(s)
    }
}

impl utoipa::PartialSchema for Discrepancy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        <DiscrepancyView<'_> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Discrepancy {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Discrepancy")
    }
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
    let closed_at = ClosedPeriod::find(conn, period).await?.map(|c| c.closed_at);
    let statements = statements_for_period(conn, period, currency, now).await?;
    let invoiced = Invoice::billed_lines(conn, period).await?;
    let invoice_count = invoiced
        .iter()
        .map(|(_, n, _)| n)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut by_key: HashMap<(Uuid, String, i32), (String, InvoiceLine)> = HashMap::new();
    for (user_id, number, line) in invoiced {
        by_key.insert((user_id, line.api_slug.clone(), line.price_id), (number, line));
    }
    let ids: Vec<Uuid> = statements.keys().copied().collect();
    let emails: HashMap<Uuid, String> = User::emails(conn, &ids).await?.into_iter().collect();

    let mut discrepancies = Vec::new();
    let mut recorded_total = Decimal::ZERO;
    let mut invoiced_total = Decimal::ZERO;
    for (user_id, statement) in &statements {
        for line in &statement.lines {
            recorded_total += line.priced.amount;
            let (number, invoiced) = match by_key.remove(&(*user_id, line.slug.clone(), line.price_id)) {
                Some((n, l)) => (Some(n), Some(l.priced)),
                None => (None, None),
            };
            let as_invoiced = invoiced.unwrap_or(PricedLine::NONE);
            invoiced_total += as_invoiced.amount;
            if as_invoiced.calls != line.priced.calls || as_invoiced.failed_calls != line.priced.failed_calls {
                discrepancies.push(Discrepancy {
                    user_id: *user_id,
                    email: emails.get(user_id).cloned().unwrap_or_default(),
                    invoice_number: number,
                    slug: line.slug.clone(),
                    price_id: line.price_id,
                    price_effective_from: line.price_effective_from,
                    recorded: line.priced,
                    invoiced,
                });
            }
        }
    }
    // Invoiced lines whose records vanished cannot happen (records only grow),
    // but count them so the totals stay honest.
    invoiced_total += by_key.values().map(|(_, l)| l.priced.amount).sum::<Decimal>();
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
    let candidates = UsageRecord::unclosed_periods_before(conn, current).await?;
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    Ok(candidates
        .into_iter()
        .filter(|p| p.ends_at(tz) + grace <= now)
        .collect())
}
