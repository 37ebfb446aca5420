use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use payg::domain::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{TEST_JWT_SECRET, TestApp, scalar_i64};

const USERS: i64 = 10_000;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// 10,000 users with usage in 2026-03 (straight in SQL: the point here is
/// the export), one with a formula-looking billing name, closed through the API.
async fn closed_period_with_many_invoices() -> (TestApp, String) {
    let clock = Arc::new(ManualClock::new(at("2026-04-01T00:11:00Z")));
    let app = TestApp::builder()
        .clock(clock)
        .env("PAYG_CLOSE_GRACE", "876000h")
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
    let res = app
        .post_auth("/api/v1/finance/periods/2026-03/close", &finance.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["invoices_issued"].as_i64(), Some(USERS));
    (app, finance.token)
}

#[derive(diesel::QueryableByName, Debug)]
struct Expected {
    #[diesel(sql_type = diesel::sql_types::Text)]
    invoice_number: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_email: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    billing_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    billing_company: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    api_slug: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    quantity: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    failed_quantity: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    free_quantity: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    billable_quantity: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    unit_price: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    line_amount: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    invoice_total: String,
}

async fn expected_rows(app: &TestApp) -> Vec<Expected> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(
        "SELECT i.number AS invoice_number, u.email AS user_email, i.billing_name,
                coalesce(i.billing_company, '') AS billing_company, l.api_slug,
                l.calls::text AS quantity, l.failed_calls::text AS failed_quantity,
                l.free_calls::text AS free_quantity, l.charged_calls::text AS billable_quantity,
                l.unit_price::text AS unit_price, l.amount::text AS line_amount, i.total::text AS invoice_total
         FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id JOIN users u ON u.id = i.user_id
         WHERE i.period = '2026-03-01' ORDER BY i.number, l.position",
    )
    .load(&mut app.db.conn().await)
    .await
    .unwrap()
}

/// What a spreadsheet-safe cell holds for a stored value.
fn neutralised(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
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
    assert_eq!(
        headers,
        payg::billing::export::CSV_HEADER
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    let col: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h.as_str(), i)).collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let expected = expected_rows(&app).await;
    assert_eq!(rows.len(), expected.len());
    assert_eq!(
        rows.iter()
            .map(|r| &r[col["invoice_number"]])
            .collect::<std::collections::HashSet<_>>()
            .len() as i64,
        USERS
    );
    for (row, want) in rows.iter().zip(&expected) {
        let cell = |name: &str| row[col[name]].to_owned();
        assert_eq!(cell("invoice_number"), want.invoice_number);
        assert_eq!(cell("user_email"), want.user_email);
        assert_eq!(cell("billing_name"), neutralised(&want.billing_name));
        assert_eq!(cell("billing_company"), neutralised(&want.billing_company));
        assert_eq!(cell("billing_country"), "GB");
        assert_eq!(cell("billing_tax_id"), "'-42", "formula-looking cells are neutralised");
        assert_eq!(cell("period"), "2026-03");
        assert_eq!(cell("status"), "issued");
        assert_eq!(cell("api_slug"), want.api_slug);
        assert_eq!(cell("quantity"), want.quantity);
        assert_eq!(cell("failed_quantity"), want.failed_quantity);
        assert_eq!(cell("free_quantity"), want.free_quantity);
        assert_eq!(cell("billable_quantity"), want.billable_quantity);
        assert_eq!(cell("unit_price"), want.unit_price);
        assert_eq!(cell("line_amount"), want.line_amount);
        assert_eq!(cell("invoice_total"), want.invoice_total);
        assert_eq!(cell("currency"), "USD");
        assert!(DateTime::parse_from_rfc3339(&cell("issued_at")).is_ok());
        assert!(DateTime::parse_from_rfc3339(&cell("due_at")).is_ok());
    }
    let evil = rows
        .iter()
        .find(|r| r[col["user_email"]] == *"user1@example.com")
        .unwrap();
    assert_eq!(&evil[col["billing_name"]], "'=HYPERLINK(\"http://evil\",\"click\")");
    let quoted = rows
        .iter()
        .find(|r| r[col["user_email"]] == *"user2@example.com")
        .unwrap();
    assert_eq!(&quoted[col["billing_name"]], "Comma, \"Quoted\" & Co");
    let multi = rows
        .iter()
        .find(|r| r[col["user_email"]] == *"user4@example.com")
        .unwrap();
    assert_eq!(&multi[col["billing_name"]], "multi\nline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_export_and_the_cli_export_carry_the_same_rows() {
    let (app, token) = closed_period_with_many_invoices().await;
    let res = app
        .get_auth("/api/v1/finance/invoices/export?period=2026-03&format=json", &token)
        .await;
    assert_eq!(res.status(), 200);
    let rows: Vec<Value> = res.json().await.unwrap();
    let expected = expected_rows(&app).await;
    assert_eq!(rows.len(), expected.len());
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(row["invoice_number"], want.invoice_number.as_str());
        // JSON is not a spreadsheet: values are exact, not neutralised.
        assert_eq!(row["billing_name"], want.billing_name.as_str());
        assert_eq!(row["line_amount"], want.line_amount.as_str());
        assert_eq!(row["period"], "2026-03");
    }
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
}
