use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;

use chrono::DateTime;
use payg::domain::ManualClock;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use crate::helpers::{TEST_JWT_SECRET, TestApp, at, scalar_i64};

const USERS: i64 = 10_000;
/// Set for the test's app, so the due date is the test's own expectation.
const DUE_DAYS: i64 = 14;

/// 2026-03 prices: (slug, unit price, free calls a month). Free calls make
/// charged calls (calls − failed − free) differ from billable ones.
const PRICES: [(&str, &str, i64); 2] = [("tools-uuid", "0.001", 5), ("tools-time", "0.0025", 0)];

/// 10,000 users with usage in 2026-03 and that month's prices (straight in
/// SQL: the point here is the export), one with a formula-looking billing
/// name, closed through the API.
async fn closed_period_with_many_invoices() -> (TestApp, String) {
    let clock = Arc::new(ManualClock::new(at("2026-04-01T00:11:00Z")));
    let app = TestApp::builder()
        .clock(clock)
        .env("PAYG_CLOSE_GRACE", "876000h")
        .env("PAYG_INVOICE_DUE_DAYS", &DUE_DAYS.to_string())
        .spawn()
        .await;
    let finance = app.user_with_role("finance").await;
    app.sql(&format!(
        "INSERT INTO users (id, email, password_hash, name, company, country, tax_id)
         SELECT md5('u' || g)::uuid, 'user' || g || '@example.com', 'x',
                CASE g WHEN 1 THEN '=HYPERLINK(\"http://evil\",\"click\")'
                       WHEN 2 THEN 'Comma, \"Quoted\" & Co'
                       WHEN 3 THEN '@SUM(1+1)'
                       WHEN 4 THEN E'multi\\nline'
                       ELSE 'User ' || g END,
                CASE WHEN g % 2 = 0 THEN '+Plus Ltd' END, 'GB', '-42'
         FROM generate_series(1, {USERS}) g;
         INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls)
         SELECT md5('u' || g)::uuid, a.id, DATE '2026-03-01', 1000 + g, g % 7
         FROM generate_series(1, {USERS}) g
         JOIN apis a ON a.slug = 'tools-uuid' OR (a.slug = 'tools-time' AND g % 3 = 0);"
    ))
    .await;
    for (slug, unit_price, free_calls) in PRICES {
        app.sql(&format!(
            "INSERT INTO prices (api_id, effective_from, unit_price, free_calls)
             SELECT id, TIMESTAMPTZ '2026-03-01T00:00:00Z', {unit_price}, {free_calls} FROM apis WHERE slug = '{slug}'"
        ))
        .await;
    }
    // The same calls by the version they arrived under, as a flush writes them.
    app.sql(
        "INSERT INTO usage_prices (user_id, api_id, period, price_id, calls, failed_calls)
         SELECT r.user_id, r.api_id, r.period, p.id, r.calls, r.failed_calls
         FROM usage_records r
         JOIN prices p ON p.api_id = r.api_id AND p.effective_from = TIMESTAMPTZ '2026-03-01T00:00:00Z'",
    )
    .await;
    let res = app
        .post_auth("/api/v1/finance/periods/2026-03/close", &finance.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["invoices_issued"].as_i64(), Some(USERS));
    (app, finance.token)
}

/// The columns of an export row, in CSV order, as finance reads them; the
/// JSON export has exactly these fields.
const COLUMNS: [&str; 23] = [
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

/// One user of `closed_period_with_many_invoices`, as the SQL there made them.
struct Seeded {
    email: String,
    name: String,
    company: Option<&'static str>,
    /// (API slug, calls, failed calls) in 2026-03.
    usage: Vec<(&'static str, i64, i64)>,
}

fn seeded() -> Vec<Seeded> {
    (1..=USERS)
        .map(|g| {
            let name = match g {
                1 => "=HYPERLINK(\"http://evil\",\"click\")".to_owned(),
                2 => "Comma, \"Quoted\" & Co".to_owned(),
                3 => "@SUM(1+1)".to_owned(),
                4 => "multi\nline".to_owned(),
                _ => format!("User {g}"),
            };
            let mut usage = vec![("tools-uuid", 1000 + g, g % 7)];
            if g % 3 == 0 {
                usage.push(("tools-time", 1000 + g, g % 7));
            }
            Seeded {
                email: format!("user{g}@example.com"),
                name,
                company: (g % 2 == 0).then_some("+Plus Ltd"),
                usage,
            }
        })
        .collect()
}

/// (unit price, free calls) of a slug in 2026-03.
fn price(slug: &str) -> (&'static str, i64) {
    let (_, unit, free) = PRICES.into_iter().find(|(s, _, _)| *s == slug).unwrap();
    (unit, free)
}

/// (free, charged) calls and the amount of a line: calls beyond the failed
/// and the free ones, at the unit price, rounded half-even to cents.
fn priced(slug: &str, calls: i64, failed: i64) -> (i64, i64, Decimal) {
    let (unit, free) = price(slug);
    let free = free.min(calls - failed);
    let charged = calls - failed - free;
    let amount = (Decimal::from(charged) * unit.parse::<Decimal>().unwrap())
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    (free, charged, amount)
}

/// Every column but invoice_number and the instants (checked on their
/// own), as the JSON export holds it, for one seeded line.
fn expected_row(user: &Seeded, slug: &str) -> BTreeMap<&'static str, Value> {
    let (_, calls, failed) = *user.usage.iter().find(|(s, _, _)| *s == slug).unwrap();
    let total: Decimal = user
        .usage
        .iter()
        .map(|(slug, calls, failed)| priced(slug, *calls, *failed).2)
        .sum();
    let (free, charged, amount) = priced(slug, calls, failed);
    BTreeMap::from([
        ("user_email", json!(user.email)),
        ("billing_name", json!(user.name)),
        ("billing_company", json!(user.company)),
        ("billing_country", json!("GB")),
        ("billing_tax_id", json!("-42")),
        ("period", json!("2026-03")),
        ("status", json!("issued")),
        ("api_slug", json!(slug)),
        ("quantity", json!(calls)),
        ("failed_quantity", json!(failed)),
        ("free_quantity", json!(free)),
        ("charged_quantity", json!(charged)),
        ("unit_price", json!(price(slug).0)),
        ("line_amount", json!(amount.to_string())),
        ("invoice_total", json!(total.to_string())),
        ("currency", json!("USD")),
        ("invoice_credit_applied", json!("0")),
        ("invoice_amount_paid", json!("0")),
        ("invoice_amount_due", json!(total.to_string())),
    ])
}

/// What a spreadsheet-safe cell holds for a stored value.
fn neutralised(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// A CSV cell for an expected JSON value: text neutralised, null empty.
fn csv_cell(v: &Value) -> Value {
    Value::String(match v {
        Value::String(s) => neutralised(s),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// The rows, in order, are exactly the seeded usage: one invoice per user,
/// numbered gaplessly, its lines together, each column as `expect` turns the
/// expected JSON value into what the format holds.
fn assert_rows_are_the_seeded_usage(rows: &[serde_json::Map<String, Value>], expect: impl Fn(&Value) -> Value) {
    let seeded = seeded();
    let mut by_email: HashMap<&str, &Seeded> = seeded.iter().map(|u| (u.email.as_str(), u)).collect();
    let lines: usize = seeded.iter().map(|u| u.usage.len()).sum();
    assert_eq!(rows.len(), lines, "one row per seeded line");
    let issued = at("2026-04-01T00:11:00Z");
    let mut numbers = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let number = rows[i]["invoice_number"].as_str().unwrap().to_owned();
        let email = rows[i]["user_email"].as_str().unwrap().to_owned();
        let user = by_email
            .remove(email.as_str())
            .unwrap_or_else(|| panic!("{number}: {email} is not a seeded user, or has a second invoice"));
        let group = rows
            .get(i..i + user.usage.len())
            .unwrap_or_else(|| panic!("{number}: fewer rows than {email} has lines"));
        let mut slugs: Vec<&str> = group.iter().map(|r| r["api_slug"].as_str().unwrap()).collect();
        slugs.sort_unstable();
        let mut want_slugs: Vec<&str> = user.usage.iter().map(|(s, _, _)| *s).collect();
        want_slugs.sort_unstable();
        assert_eq!(slugs, want_slugs, "{number}: its lines, together");
        for row in group {
            let keys: BTreeSet<&str> = row.keys().map(String::as_str).collect();
            assert_eq!(keys, COLUMNS.into_iter().collect(), "{number}: the columns");
            assert_eq!(
                row["invoice_number"],
                json!(number),
                "{number}: lines of one invoice are adjacent"
            );
            let slug = row["api_slug"].as_str().unwrap();
            for (column, want) in expected_row(user, slug) {
                assert_eq!(row[column], expect(&want), "{number} {slug}: {column}");
            }
            let time = |column: &str| {
                DateTime::parse_from_rfc3339(row[column].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{number}: {column}: {e}"))
            };
            assert_eq!(time("issued_at"), issued, "{number}: issued at the close");
            assert_eq!(
                time("price_effective_from"),
                at("2026-03-01T00:00:00Z"),
                "{number}: the version in force"
            );
            assert_eq!(
                time("due_at"),
                issued + chrono::Duration::days(DUE_DAYS),
                "{number}: due date"
            );
        }
        numbers.push(number);
        i += user.usage.len();
    }
    assert!(by_email.is_empty(), "{} seeded users have no rows", by_email.len());
    let want: Vec<String> = (1..=USERS).map(|n| format!("INV-2026-{n:06}")).collect();
    assert_eq!(numbers, want, "ordered by invoice number, gapless from 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporting_ten_thousand_invoices_streams_csv_that_parses_back_cell_by_cell() {
    let (app, token) = closed_period_with_many_invoices().await;
    let res = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=csv", &token)
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(res.headers().get("content-length").is_none(), "streamed, not buffered");
    let body = res.bytes().await.unwrap();

    let mut reader = csv::ReaderBuilder::new().from_reader(&body[..]);
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(headers, COLUMNS, "the header row");
    let rows: Vec<serde_json::Map<String, Value>> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.len(), headers.len(), "every row has every column");
            headers.iter().cloned().zip(r.iter().map(|c| json!(c))).collect()
        })
        .collect();
    assert_rows_are_the_seeded_usage(&rows, csv_cell);

    // Spelled out once, not through `neutralised`.
    let cell = |email: &str, column: &str| {
        rows.iter().find(|r| r["user_email"] == email).unwrap()[column]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        cell("user1@example.com", "billing_name"),
        "'=HYPERLINK(\"http://evil\",\"click\")"
    );
    assert_eq!(cell("user2@example.com", "billing_name"), "Comma, \"Quoted\" & Co");
    assert_eq!(cell("user2@example.com", "billing_company"), "'+Plus Ltd");
    assert_eq!(cell("user3@example.com", "billing_company"), "");
    assert_eq!(cell("user4@example.com", "billing_name"), "multi\nline");
    assert_eq!(cell("user4@example.com", "billing_tax_id"), "'-42");

    // A row on the last page that cannot be read (a status payg does not
    // know, forced past the check constraint): the first page has gone out
    // under a 200, so the only honest answer left is to abort the transfer.
    // The client must see a broken body, never a complete-looking CSV.
    app.sql(
        "ALTER TABLE invoices DROP CONSTRAINT invoices_status_check; \
         ALTER TABLE invoices DISABLE TRIGGER invoices_immutable; \
         UPDATE invoices SET status = 'corrupt' WHERE number = (SELECT max(number) FROM invoices);",
    )
    .await;
    let res = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=csv", &token)
        .await;
    assert_eq!(res.status(), 200, "the first page was readable");
    assert!(res.bytes().await.is_err(), "the transfer is aborted, not ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_export_and_the_cli_export_carry_the_same_rows() {
    let (app, token) = closed_period_with_many_invoices().await;
    let res = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=json", &token)
        .await;
    assert_eq!(res.status(), 200);
    let rows: Vec<serde_json::Map<String, Value>> = res.json().await.unwrap();
    // JSON is not a spreadsheet: values are exact (not neutralised), counts
    // are numbers, money is a string, an absent company is null.
    assert_rows_are_the_seeded_usage(&rows, Value::clone);
    let http_csv = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=csv", &token)
        .await
        .bytes()
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_payg"))
        .args(["invoices", "export", "--period", "2026-03", "--format", "csv"])
        .env("DATABASE_URL", &app.db.url)
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, http_csv.to_vec());

    let bad = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=xml", &token)
        .await;
    assert_eq!(bad.status(), 400);
    let empty = app
        .get_auth("/api/v1/finance/invoices/export?period=2025-01&format=json", &token)
        .await;
    assert_eq!(empty.json::<Vec<Value>>().await.unwrap().len(), 0);
    assert_eq!(scalar_i64(&app.db, "SELECT count(*) AS n FROM closed_periods").await, 1);

    // A page that cannot be read midway ends the stream with an error (the
    // server then aborts the transfer), never with a complete-looking body.
    use futures_util::StreamExt;
    use payg::billing::export::{self, ExportFormat};
    let pool = payg::db::build_pool(&app.db.url, 1).unwrap();
    let period = "2026-03".parse().unwrap();
    let mut chunks = std::pin::pin!(export::stream(pool, period, ExportFormat::Csv).await.unwrap());
    let first = chunks.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"invoice_number,"), "the header and the first page");
    app.sql("ALTER TABLE invoice_lines RENAME TO invoice_lines_away").await;
    // The second page may have been read already (the next page is read
    // while the current one is written out); the third cannot have been.
    let mut later = Vec::new();
    while let Some(chunk) = chunks.next().await {
        later.push(chunk.is_ok());
    }
    app.sql("ALTER TABLE invoice_lines_away RENAME TO invoice_lines").await;
    assert_eq!(
        later.last(),
        Some(&false),
        "the stream ends with the failed page's error"
    );
    assert_eq!(later.iter().filter(|ok| !**ok).count(), 1, "and nothing follows it");
}
