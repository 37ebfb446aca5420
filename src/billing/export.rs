//! Finance export: one row per invoice line, as CSV (RFC 4180) or a JSON
//! array, produced page by page so memory stays flat however many invoices
//! a period has.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::Stream;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::db::DbPool;
use crate::domain::Period;
use crate::models::invoice::{EXPORT_PAGE_ROWS, ExportRow, Invoice, InvoiceStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
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

    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }
}

/// The export's columns, in CSV order; each JSON row has the same fields.
/// The quantities are the line's (`domain::pricing::PricedLine`) under
/// export names: `quantity` = calls, `failed_quantity` = failed calls,
/// `free_quantity` = free calls, `charged_quantity` = charged calls (what
/// `line_amount` charges for).
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
    "charged_quantity",
    "unit_price",
    "line_amount",
    "invoice_total",
    "currency",
    "issued_at",
    "due_at",
];

/// One row of the JSON export: an invoice line with its invoice's facts
/// (the CSV export has the same columns, in [`CSV_HEADER`] order).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExportJsonRow<'a> {
    pub invoice_number: &'a str,
    pub user_email: &'a str,
    pub billing_name: &'a str,
    pub billing_company: Option<&'a str>,
    pub billing_country: Option<&'a str>,
    pub billing_tax_id: Option<&'a str>,
    /// Always set: an invoice's period is the first day of a month.
    #[schema(value_type = Period)]
    pub period: Option<Period>,
    pub status: InvoiceStatus,
    pub api_slug: &'a str,
    pub quantity: i64,
    pub failed_quantity: i64,
    pub free_quantity: i64,
    pub charged_quantity: i64,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub line_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub invoice_total: Decimal,
    pub currency: &'a str,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

impl<'a> From<&'a ExportRow> for ExportJsonRow<'a> {
    fn from(row: &'a ExportRow) -> Self {
        Self {
            invoice_number: &row.invoice_number,
            user_email: &row.user_email,
            billing_name: &row.billing_name,
            billing_company: row.billing_company.as_deref(),
            billing_country: row.billing_country.as_deref(),
            billing_tax_id: row.billing_tax_id.as_deref(),
            period: Period::from_first_day(row.period_start),
            status: row.status,
            api_slug: &row.api_slug,
            quantity: row.priced.calls,
            failed_quantity: row.priced.failed_calls,
            free_quantity: row.priced.free_calls,
            charged_quantity: row.priced.charged_calls,
            unit_price: row.priced.unit_price,
            line_amount: row.priced.amount,
            invoice_total: row.invoice_total,
            currency: &row.currency,
            issued_at: row.issued_at,
            due_at: row.due_at,
        }
    }
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
    let r = ExportJsonRow::from(row);
    let fields: [String; 19] = [
        r.invoice_number.to_owned(),
        r.user_email.to_owned(),
        r.billing_name.to_owned(),
        r.billing_company.unwrap_or_default().to_owned(),
        r.billing_country.unwrap_or_default().to_owned(),
        r.billing_tax_id.unwrap_or_default().to_owned(),
        r.period.map(|p| p.to_string()).unwrap_or_default(),
        r.status.to_string(),
        r.api_slug.to_owned(),
        r.quantity.to_string(),
        r.failed_quantity.to_string(),
        r.free_quantity.to_string(),
        r.charged_quantity.to_string(),
        r.unit_price.to_string(),
        r.line_amount.to_string(),
        r.invoice_total.to_string(),
        r.currency.to_owned(),
        r.issued_at.to_rfc3339(),
        r.due_at.to_rfc3339(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_csv_field(out, f);
    }
    out.push_str("\r\n");
}

fn json_row(row: &ExportRow, first: bool, out: &mut String) -> Result<(), serde_json::Error> {
    if !first {
        out.push(',');
    }
    out.push_str(&serde_json::to_string(&ExportJsonRow::from(row))?);
    Ok(())
}

/// Why an export stopped: it could not read its next page.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no database connection: {0}")]
    Unavailable(#[from] crate::db::PoolError),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error("writing a row: {0}")]
    Encoding(#[from] serde_json::Error),
}

struct ExportState {
    pool: DbPool,
    period: Period,
    format: ExportFormat,
    after: Option<(String, i32)>,
    /// The first page, read before the response started.
    first: Option<Vec<ExportRow>>,
    started: bool,
    done: bool,
}

async fn read_page(
    pool: &DbPool,
    period: Period,
    after: Option<&(String, i32)>,
) -> Result<Vec<ExportRow>, ExportError> {
    let mut conn = pool.get().await?;
    Ok(Invoice::export_page(&mut conn, period, after).await?)
}

/// The whole export as a stream of chunks, one database page at a time;
/// each page borrows a pooled connection only while it is read. The first
/// page is read before this returns, so a database that is down gives the
/// caller an error to answer with (503), not a response already begun. A
/// later page that fails ends the stream with an error: the server then
/// aborts the transfer, so the client sees an incomplete body, never a
/// complete-looking one.
pub async fn stream(
    pool: DbPool,
    period: Period,
    format: ExportFormat,
) -> Result<impl Stream<Item = Result<Bytes, ExportError>>, ExportError> {
    let first = read_page(&pool, period, None).await?;
    let state = ExportState {
        pool,
        period,
        format,
        after: None,
        first: Some(first),
        started: false,
        done: false,
    };
    Ok(futures_util::stream::try_unfold(state, |mut st| async move {
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
        let rows = match st.first.take() {
            Some(rows) => rows,
            None => read_page(&st.pool, st.period, st.after.as_ref()).await?,
        };
        for (i, row) in rows.iter().enumerate() {
            match st.format {
                ExportFormat::Csv => csv_row(row, &mut out),
                // A row that cannot be written aborts the export: a JSON
                // array with a row silently missing would look whole.
                ExportFormat::Json => json_row(row, first_chunk && i == 0, &mut out)?,
            }
        }
        match rows.last() {
            Some(last) if i64::try_from(rows.len()).unwrap_or(0) == EXPORT_PAGE_ROWS => {
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
    }))
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
