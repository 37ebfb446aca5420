//! Invoices, their lines and payments. Rows are written by month close
//! (`billing::close`) and payments (`billing::payments`); issued amounts never
//! change (the database refuses it, see the billing migration).

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::schema::{invoice_lines, invoices, payments, users};

text_enum!(InvoiceStatus { Issued => "issued", Paid => "paid", Void => "void" });

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoices, check_for_backend(diesel::pg::Pg))]
pub struct Invoice {
    pub id: Uuid,
    pub number: String,
    pub user_id: Uuid,
    #[serde(serialize_with = "serialize_period")]
    #[schema(value_type = crate::billing::Period)]
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
    pub calls: i64,
    pub failed_calls: i64,
    pub billable_calls: i64,
    pub free_calls: i64,
    pub charged_calls: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
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
