//! Finance export: one row per invoice line, as CSV (RFC 4180) or a JSON
//! array, produced page by page so memory stays flat however many invoices
//! a period has.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::Stream;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::Period;
use crate::db::DbPool;
use crate::schema::{invoice_lines, invoices, users};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            other => Err(format!("format {other:?} is not one of csv, json")),
        }
    }
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

/// One exported row: an invoice line with its invoice's facts.
#[derive(Debug, Clone, Queryable, Serialize, utoipa::ToSchema)]
pub struct ExportRow {
    pub invoice_number: String,
    pub user_email: String,
    pub billing_name: String,
    pub billing_company: Option<String>,
    pub billing_country: Option<String>,
    pub billing_tax_id: Option<String>,
    #[serde(skip)]
    pub period_start: chrono::NaiveDate,
    pub status: String,
    #[serde(skip)]
    pub position: i32,
    pub api_slug: String,
    pub quantity: i64,
    pub failed_quantity: i64,
    pub free_quantity: i64,
    pub billable_quantity: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub line_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub invoice_total: Decimal,
    pub currency: String,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

pub const CSV_HEADER: [&str; 19] = [
    "invoice_number",
    "user_email",
    "billing_name",
    "billing_company",
    "billing_country",
    "billing_tax_id",
    "period",
    "status",
    "api_slug",
    "quantity",
    "failed_quantity",
    "free_quantity",
    "billable_quantity",
    "unit_price",
    "line_amount",
    "invoice_total",
    "currency",
    "issued_at",
    "due_at",
];

const PAGE_ROWS: i64 = 1_000;

/// One page of rows after `after` = (invoice number, line position).
pub async fn page(
    conn: &mut AsyncPgConnection,
    period: Period,
    after: Option<&(String, i32)>,
) -> QueryResult<Vec<ExportRow>> {
    let mut q = invoices::table
        .inner_join(invoice_lines::table)
        .inner_join(users::table)
        .filter(invoices::period.eq(period.first_day()))
        .into_boxed();
    if let Some((number, position)) = after {
        q = q.filter(
            invoices::number.gt(number.clone()).or(invoices::number
                .eq(number.clone())
                .and(invoice_lines::position.gt(*position))),
        );
    }
    q.order((invoices::number, invoice_lines::position))
        .limit(PAGE_ROWS)
        .select((
            invoices::number,
            users::email,
            invoices::billing_name,
            invoices::billing_company,
            invoices::billing_country,
            invoices::billing_tax_id,
            invoices::period,
            invoices::status,
            invoice_lines::position,
            invoice_lines::api_slug,
            invoice_lines::calls,
            invoice_lines::failed_calls,
            invoice_lines::free_calls,
            invoice_lines::charged_calls,
            invoice_lines::unit_price,
            invoice_lines::amount,
            invoices::total,
            invoices::currency,
            invoices::issued_at,
            invoices::due_at,
        ))
        .load(conn)
        .await
}

/// Spreadsheet programs run cells starting with these as formulas; such a
/// cell gets a leading `'` so it is shown as text (OWASP CSV injection).
fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// RFC 4180: quote a field holding a comma, quote or line break; double quotes.
fn push_csv_field(out: &mut String, raw: &str) {
    let cell = neutralise(raw);
    if cell.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&cell);
    }
}

pub fn csv_header() -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    out
}

pub fn csv_row(row: &ExportRow, out: &mut String) {
    let period = Period::from_first_day(row.period_start)
        .map(|p| p.to_string())
        .unwrap_or_default();
    let fields: [String; 19] = [
        row.invoice_number.clone(),
        row.user_email.clone(),
        row.billing_name.clone(),
        row.billing_company.clone().unwrap_or_default(),
        row.billing_country.clone().unwrap_or_default(),
        row.billing_tax_id.clone().unwrap_or_default(),
        period,
        row.status.clone(),
        row.api_slug.clone(),
        row.quantity.to_string(),
        row.failed_quantity.to_string(),
        row.free_quantity.to_string(),
        row.billable_quantity.to_string(),
        row.unit_price.to_string(),
        row.line_amount.to_string(),
        row.invoice_total.to_string(),
        row.currency.clone(),
        row.issued_at.to_rfc3339(),
        row.due_at.to_rfc3339(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_csv_field(out, f);
    }
    out.push_str("\r\n");
}

fn json_row(row: &ExportRow, first: bool, out: &mut String) {
    #[derive(Serialize)]
    struct WithPeriod<'a> {
        period: String,
        #[serde(flatten)]
        row: &'a ExportRow,
    }
    if !first {
        out.push(',');
    }
    let period = Period::from_first_day(row.period_start)
        .map(|p| p.to_string())
        .unwrap_or_default();
    if let Ok(s) = serde_json::to_string(&WithPeriod { period, row }) {
        out.push_str(&s);
    }
}

struct ExportState {
    pool: DbPool,
    period: Period,
    format: ExportFormat,
    after: Option<(String, i32)>,
    started: bool,
    done: bool,
}

/// The whole export as a stream of chunks, one database page at a time;
/// each page borrows a pooled connection only while it is read.
pub fn stream(pool: DbPool, period: Period, format: ExportFormat) -> impl Stream<Item = anyhow::Result<Bytes>> {
    let state = ExportState {
        pool,
        period,
        format,
        after: None,
        started: false,
        done: false,
    };
    futures_util::stream::try_unfold(state, |mut st| async move {
        if st.done {
            return Ok(None);
        }
        let mut out = String::new();
        let first_chunk = !st.started;
        if first_chunk {
            st.started = true;
            match st.format {
                ExportFormat::Csv => out.push_str(&csv_header()),
                ExportFormat::Json => out.push('['),
            }
        }
        let rows = {
            let mut conn = st.pool.get().await?;
            page(&mut conn, st.period, st.after.as_ref()).await?
        };
        for (i, row) in rows.iter().enumerate() {
            match st.format {
                ExportFormat::Csv => csv_row(row, &mut out),
                ExportFormat::Json => json_row(row, first_chunk && i == 0 && st.after.is_none(), &mut out),
            }
        }
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap_or(0) == PAGE_ROWS => {
                st.after = Some((last.invoice_number.clone(), last.position));
            }
            _ => {
                st.done = true;
                if st.format == ExportFormat::Json {
                    out.push(']');
                }
            }
        }
        Ok(Some((Bytes::from(out), st)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_formulas_neutralised() {
        let mut out = String::new();
        push_csv_field(&mut out, "plain");
        out.push('|');
        push_csv_field(&mut out, "a,b \"c\"\r\nd");
        out.push('|');
        push_csv_field(&mut out, "=HYPERLINK(\"x\")");
        out.push('|');
        push_csv_field(&mut out, "@SUM(A1)");
        out.push('|');
        push_csv_field(&mut out, "-1+1");
        assert_eq!(
            out,
            "plain|\"a,b \"\"c\"\"\r\nd\"|\"'=HYPERLINK(\"\"x\"\")\"|'@SUM(A1)|'-1+1"
        );
    }
}
