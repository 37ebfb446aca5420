//! Invoices, their lines and payments. Rows are written by month close
//! (`billing::close`) and payments (`billing::payments`); issued amounts never
//! change (the database refuses it, see the billing migration).

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Period;
use crate::domain::pricing::PricedLine;
use crate::schema::{closed_periods, invoice_lines, invoice_sequences, invoices, payments, users, webhook_events};

text_enum!(InvoiceStatus { Issued => "issued", Paid => "paid", Void => "void" });

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoices, check_for_backend(diesel::pg::Pg))]
pub struct Invoice {
    pub id: Uuid,
    pub number: String,
    pub user_id: Uuid,
    #[serde(serialize_with = "serialize_period")]
    #[schema(value_type = crate::domain::Period)]
    pub period: NaiveDate,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    pub status: InvoiceStatus,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub billing_email: String,
    pub billing_name: String,
    pub billing_company: Option<String>,
    pub billing_address_line1: Option<String>,
    pub billing_address_line2: Option<String>,
    pub billing_city: Option<String>,
    pub billing_postal_code: Option<String>,
    pub billing_country: Option<String>,
    pub billing_tax_id: Option<String>,
    /// Prepaid credit that paid part of the total when the period closed;
    /// what is due is `total − credit_applied − amount_paid`.
    #[serde(with = "rust_decimal::serde::str")]
    pub credit_applied: Decimal,
    /// What the invoice still asks for (a generated column).
    #[serde(with = "rust_decimal::serde::str")]
    #[diesel(skip_insertion)]
    pub amount_due: Decimal,
}

fn serialize_period<S: serde::Serializer>(date: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&date.format("%Y-%m"))
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoice_lines, check_for_backend(diesel::pg::Pg))]
pub struct InvoiceLine {
    #[serde(skip)]
    pub invoice_id: Uuid,
    pub position: i32,
    #[serde(skip)]
    pub api_id: i32,
    #[serde(rename = "slug")]
    pub api_slug: String,
    #[serde(rename = "name")]
    pub api_name: String,
    /// The price version these calls arrived under; 0 when none was in
    /// force (the API was free then).
    pub price_id: i32,
    /// When that version started; `null` when none was in force.
    pub price_effective_from: Option<DateTime<Utc>>,
    /// The line as pricing computed it at close; its columns are
    /// `invoice_lines.calls` … `invoice_lines.amount`.
    #[diesel(embed)]
    #[serde(flatten)]
    pub priced: PricedLine,
}

/// The seven `invoice_lines` columns a [`PricedLine`] is stored in, in
/// field order.
type PricedColumns = (
    invoice_lines::calls,
    invoice_lines::failed_calls,
    invoice_lines::billable_calls,
    invoice_lines::free_calls,
    invoice_lines::charged_calls,
    invoice_lines::unit_price,
    invoice_lines::amount,
);
const PRICED_COLUMNS: PricedColumns = (
    invoice_lines::calls,
    invoice_lines::failed_calls,
    invoice_lines::billable_calls,
    invoice_lines::free_calls,
    invoice_lines::charged_calls,
    invoice_lines::unit_price,
    invoice_lines::amount,
);
type PricedSql = diesel::dsl::SqlTypeOf<PricedColumns>;
type PricedValues = (
    diesel::dsl::Eq<invoice_lines::calls, i64>,
    diesel::dsl::Eq<invoice_lines::failed_calls, i64>,
    diesel::dsl::Eq<invoice_lines::billable_calls, i64>,
    diesel::dsl::Eq<invoice_lines::free_calls, i64>,
    diesel::dsl::Eq<invoice_lines::charged_calls, i64>,
    diesel::dsl::Eq<invoice_lines::unit_price, Decimal>,
    diesel::dsl::Eq<invoice_lines::amount, Decimal>,
);

impl Selectable<diesel::pg::Pg> for PricedLine {
    type SelectExpression = PricedColumns;

    fn construct_selection() -> PricedColumns {
        PRICED_COLUMNS
    }
}

impl Queryable<PricedSql, diesel::pg::Pg> for PricedLine {
    type Row = (i64, i64, i64, i64, i64, Decimal, Decimal);

    fn build(
        (calls, failed_calls, billable_calls, free_calls, charged_calls, unit_price, amount): Self::Row,
    ) -> diesel::deserialize::Result<Self> {
        Ok(PricedLine {
            calls,
            failed_calls,
            billable_calls,
            free_calls,
            charged_calls,
            unit_price,
            amount,
        })
    }
}

impl Insertable<invoice_lines::table> for PricedLine {
    type Values = <PricedValues as Insertable<invoice_lines::table>>::Values;

    fn values(self) -> Self::Values {
        (
            invoice_lines::calls.eq(self.calls),
            invoice_lines::failed_calls.eq(self.failed_calls),
            invoice_lines::billable_calls.eq(self.billable_calls),
            invoice_lines::free_calls.eq(self.free_calls),
            invoice_lines::charged_calls.eq(self.charged_calls),
            invoice_lines::unit_price.eq(self.unit_price),
            invoice_lines::amount.eq(self.amount),
        )
            .values()
    }
}

impl Insertable<invoice_lines::table> for &PricedLine {
    type Values = <PricedValues as Insertable<invoice_lines::table>>::Values;

    fn values(self) -> Self::Values {
        (*self).values()
    }
}

/// One row of the finance export: an invoice line with its invoice's facts.
#[derive(Debug, Clone, Queryable)]
pub struct ExportRow {
    pub invoice_number: String,
    pub user_email: String,
    pub billing_name: String,
    pub billing_company: Option<String>,
    pub billing_country: Option<String>,
    pub billing_tax_id: Option<String>,
    pub period_start: NaiveDate,
    pub status: InvoiceStatus,
    pub api_slug: String,
    pub priced: PricedLine,
    pub invoice_total: Decimal,
    pub currency: String,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub price_effective_from: Option<DateTime<Utc>>,
    pub invoice_credit_applied: Decimal,
    pub invoice_amount_paid: Decimal,
    pub invoice_amount_due: Decimal,
}

/// One page of the export: the rows of whole invoices, and the invoice
/// number the next page starts after (`None`: this page is the last).
#[derive(Debug)]
pub struct ExportPage {
    pub rows: Vec<ExportRow>,
    pub next_after: Option<String>,
}

/// A period that has been closed, and what its close issued.
#[derive(Debug, Clone, Copy, Queryable, Selectable, Insertable)]
#[diesel(table_name = closed_periods, check_for_backend(diesel::pg::Pg))]
pub struct ClosedPeriod {
    pub period: NaiveDate,
    pub closed_at: DateTime<Utc>,
    pub invoices_issued: i32,
}

/// Serialises closes across instances (held for the closing transaction).
const CLOSE_LOCK_KEY: i64 = 0x7061_7967_636c_6f73; // "paygclos"

/// With a period's key, the lock one period's close holds against the
/// flushes that draw credit for it (two-key advisory locks: this class,
/// then `period_lock_key`).
const PERIOD_CLOSE_LOCK_CLASS: i32 = 0x7063_6c6f; // "pclo"

/// A period as an advisory-lock key: its year and month, 202612.
fn period_lock_key(period: Period) -> i32 {
    use chrono::Datelike;
    let day = period.first_day();
    day.year() * 100 + i32::try_from(day.month()).unwrap_or(0)
}

impl ClosedPeriod {
    /// Holds off the close of `period` until the transaction ends (that
    /// period's close lock, shared): its close then waits for this
    /// transaction, and this transaction sees a close that committed before
    /// it took the lock. Closes of other periods are not held off.
    pub async fn hold_off_close_of(conn: &mut AsyncPgConnection, period: Period) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock_shared($1, $2)")
            .bind::<diesel::sql_types::Integer, _>(PERIOD_CLOSE_LOCK_CLASS)
            .bind::<diesel::sql_types::Integer, _>(period_lock_key(period))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Takes `period`'s close lock (exclusive) until the transaction ends:
    /// flushes drawing credit for the period wait, and are waited for.
    pub async fn lock_period_for_close(conn: &mut AsyncPgConnection, period: Period) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind::<diesel::sql_types::Integer, _>(PERIOD_CLOSE_LOCK_CLASS)
            .bind::<diesel::sql_types::Integer, _>(period_lock_key(period))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Takes the close lock until the transaction ends: one close at a time,
    /// across every instance.
    pub async fn lock_for_close(conn: &mut AsyncPgConnection) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(CLOSE_LOCK_KEY)
            .execute(conn)
            .await
            .map(|_| ())
    }

    pub async fn find(conn: &mut AsyncPgConnection, period: Period) -> QueryResult<Option<ClosedPeriod>> {
        closed_periods::table
            .find(period.first_day())
            .select(ClosedPeriod::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn insert(conn: &mut AsyncPgConnection, closed: &ClosedPeriod) -> QueryResult<()> {
        diesel::insert_into(closed_periods::table)
            .values(closed)
            .execute(conn)
            .await
            .map(|_| ())
    }
}

/// Rows per export page: large enough that planning and the round trip are
/// a small part of a page (at 1,000 they were a fifth), small enough that
/// the two pages an export holds stay a few megabytes.
pub const EXPORT_PAGE_ROWS: i64 = 5_000;

/// Which invoices' lines [`Invoice::export_page`] reads.
enum ExportInvoices<'a> {
    /// Those numbered after this one, up to a page of rows.
    After(&'a str),
    /// This one's, all of them.
    Only(&'a str),
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = payments, check_for_backend(diesel::pg::Pg))]
pub struct Payment {
    pub id: Uuid,
    pub invoice_id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub reference: String,
    pub method: String,
    pub source: String,
    #[serde(skip)]
    pub recorded_by: Option<Uuid>,
    pub received_at: DateTime<Utc>,
}

/// An invoice with its lines and payments, as both the consumer and the
/// finance routes show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvoiceDetail {
    #[serde(flatten)]
    pub invoice: Invoice,
    /// One per API, in order; they sum to the subtotal.
    pub lines: Vec<InvoiceLine>,
    /// Oldest first.
    pub payments: Vec<Payment>,
}

impl InvoiceDetail {
    pub async fn load(conn: &mut AsyncPgConnection, invoice: Invoice) -> QueryResult<InvoiceDetail> {
        let lines = Invoice::lines(conn, invoice.id).await?;
        let payments = Invoice::payments(conn, invoice.id).await?;
        Ok(InvoiceDetail {
            invoice,
            lines,
            payments,
        })
    }
}

impl Payment {
    pub async fn find_by_reference(conn: &mut AsyncPgConnection, reference: &str) -> QueryResult<Option<Payment>> {
        payments::table
            .filter(payments::reference.eq(reference))
            .select(Payment::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn insert(conn: &mut AsyncPgConnection, payment: &Payment) -> QueryResult<Payment> {
        diesel::insert_into(payments::table)
            .values(payment)
            .returning(Payment::as_returning())
            .get_result(conn)
            .await
    }
}

/// A payment provider's event id, recorded when the event is applied.
pub struct WebhookEvent;

impl WebhookEvent {
    /// Marks a webhook event as applied; false when it had been already.
    pub async fn claim(conn: &mut AsyncPgConnection, id: &str, event_type: &str) -> QueryResult<bool> {
        let inserted = diesel::insert_into(webhook_events::table)
            .values((webhook_events::id.eq(id), webhook_events::event_type.eq(event_type)))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        Ok(inserted == 1)
    }
}

/// Filters for the finance listing; `None` = any.
#[derive(Debug, Default, Clone)]
pub struct InvoiceFilter {
    pub period: Option<NaiveDate>,
    pub status: Option<InvoiceStatus>,
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
}

impl Invoice {
    pub async fn for_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<Invoice>> {
        invoices::table
            .filter(invoices::user_id.eq(user_id))
            .order((invoices::period.desc(), invoices::number.desc()))
            .select(Invoice::as_select())
            .load(conn)
            .await
    }

    /// One of the user's own invoices; another user's id is simply not found.
    pub async fn find_for_user(conn: &mut AsyncPgConnection, id: Uuid, user_id: Uuid) -> QueryResult<Option<Invoice>> {
        invoices::table
            .filter(invoices::id.eq(id))
            .filter(invoices::user_id.eq(user_id))
            .select(Invoice::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Invoice>> {
        invoices::table
            .find(id)
            .select(Invoice::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn find_by_number(conn: &mut AsyncPgConnection, number: &str) -> QueryResult<Option<Invoice>> {
        invoices::table
            .filter(invoices::number.eq(number))
            .select(Invoice::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Locks the invoice row for the rest of the transaction.
    pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Invoice>> {
        invoices::table
            .find(id)
            .select(Invoice::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    pub async fn lines(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Vec<InvoiceLine>> {
        invoice_lines::table
            .filter(invoice_lines::invoice_id.eq(id))
            .order(invoice_lines::position)
            .select(InvoiceLine::as_select())
            .load(conn)
            .await
    }

    pub async fn payments(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Vec<Payment>> {
        payments::table
            .filter(payments::invoice_id.eq(id))
            .order(payments::received_at)
            .select(Payment::as_select())
            .load(conn)
            .await
    }

    fn filtered(filter: &InvoiceFilter) -> invoices::BoxedQuery<'static, diesel::pg::Pg> {
        let mut q = invoices::table.into_boxed();
        if let Some(p) = filter.period {
            q = q.filter(invoices::period.eq(p));
        }
        if let Some(s) = filter.status {
            q = q.filter(invoices::status.eq(s));
        }
        if let Some(u) = filter.user_id {
            q = q.filter(invoices::user_id.eq(u));
        }
        if let Some(e) = filter.user_email.clone() {
            q = q.filter(invoices::user_id.eq_any(users::table.filter(users::email.eq(e)).select(users::id)));
        }
        q
    }

    /// Takes `count` consecutive numbers from the year's sequence; returns the
    /// first. Inside the closing transaction, so a rollback returns them: no gaps.
    pub async fn reserve_numbers(conn: &mut AsyncPgConnection, year: i32, count: i32) -> QueryResult<i64> {
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

    /// Inserts invoices and their lines in multi-row statements, chunked
    /// under PostgreSQL's 65,535 parameters.
    pub async fn insert_all(conn: &mut AsyncPgConnection, new: &[Invoice], lines: &[InvoiceLine]) -> QueryResult<()> {
        for chunk in new.chunks(1_000) {
            diesel::insert_into(invoices::table).values(chunk).execute(conn).await?;
        }
        for chunk in lines.chunks(4_000) {
            diesel::insert_into(invoice_lines::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// Sets what has been paid; the invoice is `paid` when `settled`.
    pub async fn set_paid(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        amount_paid: Decimal,
        settled: bool,
        now: DateTime<Utc>,
    ) -> QueryResult<Invoice> {
        diesel::update(invoices::table.find(id))
            .set((
                invoices::amount_paid.eq(amount_paid),
                invoices::status.eq(if settled {
                    InvoiceStatus::Paid
                } else {
                    InvoiceStatus::Issued
                }),
                invoices::paid_at.eq(settled.then_some(now)),
            ))
            .returning(Invoice::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn set_void(conn: &mut AsyncPgConnection, id: Uuid, now: DateTime<Utc>) -> QueryResult<Invoice> {
        diesel::update(invoices::table.find(id))
            .set((
                invoices::status.eq(InvoiceStatus::Void),
                invoices::voided_at.eq(Some(now)),
            ))
            .returning(Invoice::as_returning())
            .get_result(conn)
            .await
    }

    /// Every non-void invoice line of a period: (user, invoice number, line).
    pub async fn billed_lines(
        conn: &mut AsyncPgConnection,
        period: Period,
    ) -> QueryResult<Vec<(Uuid, String, InvoiceLine)>> {
        invoices::table
            .inner_join(invoice_lines::table)
            .filter(invoices::period.eq(period.first_day()))
            .filter(invoices::status.ne(InvoiceStatus::Void))
            .select((invoices::user_id, invoices::number, InvoiceLine::as_select()))
            .load(conn)
            .await
    }

    /// One page of a period's export rows: whole invoices numbered after
    /// `after`, in (invoice number, line position) order, about
    /// [`EXPORT_PAGE_ROWS`] rows.
    ///
    /// Pages end on an invoice boundary so that the next one starts at
    /// `number > last` alone, which PostgreSQL estimates well: with a
    /// row key (`number > n OR (number = n AND position > p)`) it
    /// misjudged the last fifth of a period as a few rows and scanned every
    /// line of the table for each of those pages.
    pub async fn export_page(
        conn: &mut AsyncPgConnection,
        period: Period,
        after: Option<&str>,
    ) -> QueryResult<ExportPage> {
        // The empty string sorts before every invoice number.
        let after = after.unwrap_or("");
        let mut rows = Self::export_rows(conn, period, ExportInvoices::After(after)).await?;
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < EXPORT_PAGE_ROWS {
            return Ok(ExportPage { rows, next_after: None });
        }
        // The page is full, so its last invoice may be cut short: it starts
        // the next page instead, unless it is the page's only invoice (more
        // lines than a page holds), which is then read whole on its own.
        let Some(last) = rows.last().map(|row| row.invoice_number.clone()) else {
            return Ok(ExportPage { rows, next_after: None });
        };
        match rows.iter().rposition(|row| row.invoice_number != last) {
            Some(end_of_complete) => {
                rows.truncate(end_of_complete + 1);
                let next_after = rows.last().map(|row| row.invoice_number.clone());
                Ok(ExportPage { rows, next_after })
            }
            None => {
                let rows = Self::export_rows(conn, period, ExportInvoices::Only(&last)).await?;
                Ok(ExportPage {
                    rows,
                    next_after: Some(last),
                })
            }
        }
    }

    async fn export_rows(
        conn: &mut AsyncPgConnection,
        period: Period,
        invoices: ExportInvoices<'_>,
    ) -> QueryResult<Vec<ExportRow>> {
        let q = invoices::table
            .inner_join(invoice_lines::table)
            .inner_join(users::table)
            .filter(invoices::period.eq(period.first_day()))
            .into_boxed();
        let q = match invoices {
            ExportInvoices::After(number) => q.filter(invoices::number.gt(number.to_owned())).limit(EXPORT_PAGE_ROWS),
            ExportInvoices::Only(number) => q.filter(invoices::number.eq(number.to_owned())),
        };
        q.order((invoices::number, invoice_lines::position))
            .select((
                invoices::number,
                users::email,
                invoices::billing_name,
                invoices::billing_company,
                invoices::billing_country,
                invoices::billing_tax_id,
                invoices::period,
                invoices::status,
                invoice_lines::api_slug,
                PricedLine::as_select(),
                invoices::total,
                invoices::currency,
                invoices::issued_at,
                invoices::due_at,
                invoice_lines::price_effective_from,
                invoices::credit_applied,
                invoices::amount_paid,
                invoices::amount_due,
            ))
            .load(conn)
            .await
    }

    /// A page of invoices matching `filter`, newest period first, and the total count.
    pub async fn search(
        conn: &mut AsyncPgConnection,
        filter: &InvoiceFilter,
        page: i64,
        per_page: i64,
    ) -> QueryResult<(Vec<Invoice>, i64)> {
        let total: i64 = Self::filtered(filter).count().get_result(conn).await?;
        let rows = Self::filtered(filter)
            .order((invoices::period.desc(), invoices::number))
            .limit(per_page)
            .offset((page - 1).saturating_mul(per_page))
            .select(Invoice::as_select())
            .load(conn)
            .await?;
        Ok((rows, total))
    }
}
