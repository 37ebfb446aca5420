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
use crate::models::invoice::{ExportPage, ExportRow, Invoice, InvoiceStatus};

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
pub const CSV_HEADER: [&str; 23] = [
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
    "price_effective_from",
    "invoice_credit_applied",
    "invoice_amount_paid",
    "invoice_amount_due",
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
    /// When the line's price version started (one line per API and
    /// version); empty when no price was in force (free).
    pub price_effective_from: Option<DateTime<Utc>>,
    /// Prepaid credit the invoice applied at the close.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub invoice_credit_applied: Decimal,
    /// Payments recorded against it so far.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub invoice_amount_paid: Decimal,
    /// What it still asks for: total − credit applied − paid (0 once void).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub invoice_amount_due: Decimal,
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
            price_effective_from: row.price_effective_from,
            invoice_credit_applied: row.invoice_credit_applied,
            invoice_amount_paid: row.invoice_amount_paid,
            invoice_amount_due: row.invoice_amount_due,
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

/// One chunk of the CSV export being written: RFC 4180 as the `csv` crate
/// writes it (a field holding a comma, quote or line break is quoted, its
/// quotes doubled; records end in CRLF), every cell neutralised first.
struct CsvChunk {
    writer: csv::Writer<Vec<u8>>,
    /// Numbers, amounts and dates are formatted here, not into a new
    /// `String` per cell.
    scratch: String,
}

impl CsvChunk {
    fn new(capacity: usize) -> Self {
        Self {
            writer: csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(Vec::with_capacity(capacity)),
            scratch: String::new(),
        }
    }

    fn text(&mut self, cell: &str) -> csv::Result<()> {
        self.writer.write_field(neutralise(cell).as_bytes())
    }

    fn display(&mut self, cell: impl std::fmt::Display) -> csv::Result<()> {
        use std::fmt::Write as _;
        self.scratch.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.scratch, "{cell}");
        self.writer.write_field(neutralise(&self.scratch).as_bytes())
    }

    fn header(&mut self) -> csv::Result<()> {
        self.writer.write_record(CSV_HEADER)
    }

    fn row(&mut self, row: &ExportRow) -> csv::Result<()> {
        let r = ExportJsonRow::from(row);
        self.text(r.invoice_number)?;
        self.text(r.user_email)?;
        self.text(r.billing_name)?;
        self.text(r.billing_company.unwrap_or_default())?;
        self.text(r.billing_country.unwrap_or_default())?;
        self.text(r.billing_tax_id.unwrap_or_default())?;
        match r.period {
            Some(period) => self.display(period)?,
            None => self.text("")?,
        }
        self.text(r.status.as_str())?;
        self.text(r.api_slug)?;
        self.display(r.quantity)?;
        self.display(r.failed_quantity)?;
        self.display(r.free_quantity)?;
        self.display(r.charged_quantity)?;
        self.display(r.unit_price)?;
        self.display(r.line_amount)?;
        self.display(r.invoice_total)?;
        self.text(r.currency)?;
        self.text(&r.issued_at.to_rfc3339())?;
        self.text(&r.due_at.to_rfc3339())?;
        self.text(&r.price_effective_from.map(|at| at.to_rfc3339()).unwrap_or_default())?;
        self.display(r.invoice_credit_applied)?;
        self.display(r.invoice_amount_paid)?;
        self.display(r.invoice_amount_due)?;
        self.writer.write_record(None::<&[u8]>)
    }

    fn finish(self) -> Result<Vec<u8>, ExportError> {
        self.writer
            .into_inner()
            .map_err(|e| ExportError::Encoding(e.into_error()))
    }
}

/// Why an export stopped: it could not read its next page.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no database connection: {0}")]
    Unavailable(#[from] crate::db::PoolError),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error("writing a row: {0}")]
    Encoding(#[source] std::io::Error),
    #[error("reading a page: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        Self::Encoding(e.into())
    }
}

impl From<serde_json::Error> for ExportError {
    fn from(e: serde_json::Error) -> Self {
        Self::Encoding(e.into())
    }
}

/// Where the next page comes from.
enum NextPage {
    /// The first page, read before the response started.
    Read(ExportPage),
    /// A later page, being read while the previous one is written out.
    Reading(tokio::task::JoinHandle<Result<ExportPage, ExportError>>),
    /// The last page has been written.
    None,
}

struct ExportState {
    pool: DbPool,
    period: Period,
    format: ExportFormat,
    next: NextPage,
}

async fn read_page(pool: DbPool, period: Period, after: Option<String>) -> Result<ExportPage, ExportError> {
    let mut conn = pool.get().await?;
    Ok(Invoice::export_page(&mut conn, period, after.as_deref()).await?)
}

/// The whole export as a stream of chunks, one database page at a time;
/// each page borrows a pooled connection only while it is read. The first
/// page is read before this returns, so a database that is down gives the
/// caller an error to answer with (503), not a response already begun. A
/// later page that fails ends the stream with an error: the server then
/// aborts the transfer, so the client sees an incomplete body, never a
/// complete-looking one.
///
/// The next page is read (on its own task) while the current one is
/// written out, so PostgreSQL and the encoding work at the same time; at
/// most two pages are in memory, and one connection is busy at a time.
pub async fn stream(
    pool: DbPool,
    period: Period,
    format: ExportFormat,
) -> Result<impl Stream<Item = Result<Bytes, ExportError>>, ExportError> {
    let first = read_page(pool.clone(), period, None).await?;
    let state = ExportState {
        pool,
        period,
        format,
        next: NextPage::Read(first),
    };
    Ok(futures_util::stream::try_unfold(state, |mut st| async move {
        let (page, first_chunk) = match std::mem::replace(&mut st.next, NextPage::None) {
            NextPage::Read(page) => (page, true),
            NextPage::Reading(page) => (page.await??, false),
            NextPage::None => return Ok(None),
        };
        let ExportPage { rows, next_after } = page;
        let last_page = next_after.is_none();
        if let Some(after) = next_after {
            // Not aborted if the stream is dropped: the read ends by itself
            // (statement_timeout bounds it) and its connection goes back to
            // the pool whole, which cancelling a query midway may not leave.
            st.next = NextPage::Reading(tokio::spawn(read_page(st.pool.clone(), st.period, Some(after))));
        }
        let chunk = match st.format {
            ExportFormat::Csv => {
                let mut csv = CsvChunk::new(rows.len() * CSV_ROW_BYTES);
                if first_chunk {
                    csv.header()?;
                }
                for row in &rows {
                    csv.row(row)?;
                }
                csv.finish()?
            }
            ExportFormat::Json => {
                let mut out = Vec::with_capacity(rows.len() * JSON_ROW_BYTES + 2);
                if first_chunk {
                    out.push(b'[');
                }
                for (i, row) in rows.iter().enumerate() {
                    if !(first_chunk && i == 0) {
                        out.push(b',');
                    }
                    // A row that cannot be written aborts the export: a
                    // JSON array with a row silently missing would look whole.
                    serde_json::to_writer(&mut out, &ExportJsonRow::from(row))?;
                }
                if last_page {
                    out.push(b']');
                }
                out
            }
        };
        Ok(Some((Bytes::from(chunk), st)))
    }))
}

/// About what a row takes (a guess for the chunk's first allocation only).
const CSV_ROW_BYTES: usize = 256;
const JSON_ROW_BYTES: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::pricing::PricedLine;
    use rust_decimal_macros::dec;

    fn csv_record(cells: &[&str]) -> String {
        let mut csv = CsvChunk::new(0);
        for cell in cells {
            csv.text(cell).unwrap();
        }
        csv.writer.write_record(None::<&[u8]>).unwrap();
        String::from_utf8(csv.finish().unwrap()).unwrap()
    }

    #[test]
    fn fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(
            csv_record(&[
                "plain",
                "a,b \"c\"\r\nd",
                "=HYPERLINK(\"x\")",
                "@SUM(A1)",
                "-1+1",
                "",
                "\tx",
                "x\ry"
            ]),
            "plain,\"a,b \"\"c\"\"\r\nd\",\"'=HYPERLINK(\"\"x\"\")\",'@SUM(A1),'-1+1,,'\tx,\"x\ry\"\r\n"
        );
    }

    fn row(billing_name: &str, company: Option<&str>) -> ExportRow {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        ExportRow {
            invoice_number: "INV-2026-000001".into(),
            user_email: "a@example.com".into(),
            billing_name: billing_name.into(),
            billing_company: company.map(Into::into),
            billing_country: Some("GB".into()),
            billing_tax_id: None,
            period_start: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            status: InvoiceStatus::Issued,
            api_slug: "tools-uuid".into(),
            priced: PricedLine {
                calls: 1_005,
                failed_calls: 5,
                billable_calls: 1_000,
                free_calls: 5,
                charged_calls: 995,
                unit_price: dec!(0.0010),
                amount: dec!(1.00),
            },
            invoice_total: dec!(12.50),
            currency: "USD".into(),
            issued_at: at("2026-04-01T00:11:00Z"),
            due_at: at("2026-04-15T00:11:00.25Z"),
            price_effective_from: Some(at("2026-03-01T00:00:00Z")),
            invoice_credit_applied: dec!(2.50),
            invoice_amount_paid: dec!(0),
            invoice_amount_due: dec!(10.00),
        }
    }

    #[test]
    fn a_row_is_the_columns_in_header_order() {
        let mut csv = CsvChunk::new(0);
        csv.header().unwrap();
        csv.row(&row("Ann", None)).unwrap();
        assert_eq!(
            String::from_utf8(csv.finish().unwrap()).unwrap(),
            format!(
                "{}\r\nINV-2026-000001,a@example.com,Ann,,GB,,2026-03,issued,tools-uuid,\
                 1005,5,5,995,0.0010,1.00,12.50,USD,2026-04-01T00:11:00+00:00,2026-04-15T00:11:00.250+00:00,\
                 2026-03-01T00:00:00+00:00,2.50,0,10.00\r\n",
                CSV_HEADER.join(",")
            )
        );
    }

    #[test]
    fn billing_text_with_quotes_commas_and_line_breaks_round_trips_through_a_csv_reader() {
        let names = [
            "Comma, \"Quoted\" & Co",
            "multi\nline\r\nand \"more\"",
            "\"",
            ",",
            "trailing space ",
            "=1+1, \"formula\"",
            "",
        ];
        let mut csv = CsvChunk::new(0);
        csv.header().unwrap();
        for name in names {
            csv.row(&row(name, Some(name))).unwrap();
        }
        let bytes = csv.finish().unwrap();
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let name_at = CSV_HEADER.iter().position(|c| *c == "billing_name").unwrap();
        let company_at = CSV_HEADER.iter().position(|c| *c == "billing_company").unwrap();
        let read: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(read.len(), names.len(), "one record per row, whatever the line breaks");
        for (record, name) in read.iter().zip(names) {
            assert_eq!(record.len(), CSV_HEADER.len());
            assert_eq!(&record[name_at], neutralise(name).as_ref());
            assert_eq!(&record[company_at], neutralise(name).as_ref());
        }
    }
}
