use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use payg::domain::ManualClock;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::helpers::{Registered, TestApp, TestDb, api_id, at, dec, error_code, scalar_i64};

/// An app whose clock stands at `now`; the automatic close is pushed far
/// out so only the test closes periods.
async fn app_at(now: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(at(now)));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .spawn()
        .await;
    (app, clock)
}

async fn call(app: &TestApp, user: &Registered, path: &str, times: usize) {
    for _ in 0..times {
        app.get_auth(path, &user.token).await;
    }
}

/// Schedules a price (from "now", 2 s ahead, unless `body` says when).
async fn schedule_price(app: &TestApp, admin: &Registered, slug: &str, body: Value) -> Value {
    let id = api_id(&app.db, slug).await;
    let res = app
        .post_auth(&format!("/api/v1/admin/apis/{id}/prices"), &admin.token, &body)
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

/// Schedules a price from "now" and moves the clock to its start: the
/// calls made next cost it.
async fn set_price(app: &TestApp, clock: &ManualClock, admin: &Registered, slug: &str, body: Value) -> Value {
    let set = schedule_price(app, admin, slug, body).await;
    clock.set(at(set["price"]["effective_from"].as_str().unwrap()));
    set
}

async fn close(app: &TestApp, finance: &Registered, period: &str) -> reqwest::Response {
    app.post_auth(
        &format!("/api/v1/finance/periods/{period}/close"),
        &finance.token,
        &json!({}),
    )
    .await
}

async fn total_cost(app: &TestApp, user: &Registered) -> Decimal {
    let me: Value = app.get_json("/api/v1/me", &user.token).await;
    dec(&me["total_cost"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_cost_prices_free_calls_tiers_and_failures() {
    let (app, clock) = app_at("2026-11-15T12:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let user = app.new_user().await;
    set_price(
        &app,
        &clock,
        &admin,
        "tools-uuid",
        json!({"unit_price": "0.002", "free_calls": 3}),
    )
    .await;
    set_price(
        &app,
        &clock,
        &admin,
        "tools-random",
        json!({"unit_price": "0.01", "tiers": [{"up_to": 2, "unit_price": "0.01"}, {"up_to": null, "unit_price": "0.005"}]}),
    )
    .await;
    call(&app, &user, "/api/v1/tools/uuid", 10).await;
    call(&app, &user, "/api/v1/tools/random?min=0&max=9", 5).await;
    call(&app, &user, "/api/v1/tools/random?min=9&max=0", 2).await; // failed: never billed
    app.flush_meter().await;

    let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(bill["period"], "2026-11");
    assert_eq!(bill["currency"], "USD");
    let lines: HashMap<&str, &Value> = bill["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["slug"].as_str().unwrap(), l))
        .collect();
    let uuid = lines["tools-uuid"];
    assert_eq!(
        (
            uuid["calls"].as_i64(),
            uuid["billable_calls"].as_i64(),
            uuid["free_calls"].as_i64()
        ),
        (Some(10), Some(10), Some(3))
    );
    assert_eq!(dec(&uuid["amount"]), Decimal::new(1, 2)); // 7 × 0.002 = 0.014 → 0.01
    let random = lines["tools-random"];
    assert_eq!(
        (
            random["calls"].as_i64(),
            random["failed_calls"].as_i64(),
            random["billable_calls"].as_i64()
        ),
        (Some(7), Some(2), Some(5))
    );
    assert_eq!(dec(&random["amount"]), Decimal::new(4, 2)); // 2 × 0.01 + 3 × 0.005 = 0.035 → 0.04
    assert_eq!(dec(&bill["total"]), Decimal::new(5, 2));
    assert_eq!(dec(&bill["subtotal"]), dec(&bill["total"]));
    // total_cost moved in the same transactions as the counters.
    assert_eq!(total_cost(&app, &user).await, Decimal::new(5, 2));

    let res = app.get_auth("/api/v1/billing/periods/2026-13", &user.token).await;
    assert_eq!(res.status(), 400);
    let other: Value = app.get_json("/api/v1/billing/periods/2026-10", &user.token).await;
    assert_eq!(other["lines"], json!([]));
    assert_eq!(other["total"], "0");
}

/// The price versions of an API: (id, first instant), oldest first.
async fn versions(app: &TestApp, admin: &Registered, slug: &str) -> Vec<(i64, DateTime<Utc>)> {
    let id = api_id(&app.db, slug).await;
    let list: Value = app
        .get_json(&format!("/api/v1/admin/apis/{id}/prices"), &admin.token)
        .await;
    list["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), at(p["effective_from"].as_str().unwrap())))
        .collect()
}

/// Property: for random usage and random prices changed at random moments
/// of the month — with calls still in the meter's buffer when they change —
/// every call is priced by the version in force when it arrived, what each
/// user sees as the current cost equals the invoice issued when the month
/// closes, and `users.total_cost` equals the priced sum of their records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_cost_equals_the_invoice_after_close_for_random_usage_and_prices() {
    let (app, clock) = app_at("2026-01-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let users = [app.new_user().await, app.new_user().await, app.new_user().await];
    let mut rng = StdRng::seed_from_u64(0x9a7_2026);
    let mut running_cost: HashMap<usize, Decimal> = HashMap::new();
    let mut split_lines = 0;
    let slugs = ["tools-uuid", "tools-time", "tools-random"];
    let calls_to = |slug: &str| match slug {
        "tools-uuid" => vec!["/api/v1/tools/uuid"],
        "tools-time" => vec!["/api/v1/tools/time", "/api/v1/tools/time?tz=Nowhere"],
        _ => vec!["/api/v1/tools/random?min=1&max=2"],
    };
    for round in 0..4u32 {
        let month = round + 1;
        let period = format!("2026-{month:02}");
        let mut now = at(&format!("2026-{month:02}-10T00:00:00Z"));
        clock.set(now);
        // Per (user, slug): calls made under each version id.
        let mut made: HashMap<(usize, &str), BTreeMap<i64, i64>> = HashMap::new();
        for step in 0..3 {
            for slug in slugs {
                if step > 0 && rng.random_range(0..2) == 0 {
                    continue;
                }
                let unit = Decimal::new(rng.random_range(0..5000), rng.random_range(2..6));
                let mut body = json!({"unit_price": unit.to_string(), "free_calls": rng.random_range(0..4)});
                if rng.random_range(0..2) == 1 {
                    let up_to = rng.random_range(1..6);
                    let second = Decimal::new(rng.random_range(0..5000), rng.random_range(2..6));
                    body["tiers"] = json!([{"up_to": up_to, "unit_price": unit.to_string()}, {"up_to": null, "unit_price": second.to_string()}]);
                }
                schedule_price(&app, &admin, slug, body).await;
            }
            for slug in slugs {
                let in_force = versions(&app, &admin, slug)
                    .await
                    .into_iter()
                    .rev()
                    .find(|(_, from)| *from <= now)
                    .map_or(0, |(id, _)| id);
                for (i, user) in users.iter().enumerate() {
                    for path in calls_to(slug) {
                        for _ in 0..rng.random_range(0..5) {
                            // Counted unless refused (an overdue invoice from
                            // an earlier round blocks the user: 402).
                            if app.get_auth(path, &user.token).await.status() != 402 {
                                *made.entry((i, slug)).or_default().entry(in_force).or_default() += 1;
                            }
                        }
                    }
                }
            }
            // Sometimes before the new versions start, sometimes after.
            now += Duration::seconds(rng.random_range(0..4));
            clock.set(now);
        }
        app.flush_meter().await;
        let mut seen = HashMap::new();
        for (i, user) in users.iter().enumerate() {
            let bill: Value = app.get_json("/api/v1/billing/current", &user.token).await;
            for slug in slugs {
                let lines: BTreeMap<i64, i64> = bill["lines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["slug"] == slug)
                    .map(|l| (l["price_id"].as_i64().unwrap(), l["calls"].as_i64().unwrap()))
                    .collect();
                let expected = made.remove(&(i, slug)).unwrap_or_default();
                split_lines += usize::from(expected.len() > 1);
                assert_eq!(
                    lines, expected,
                    "round {round}, user {i}, {slug}: calls by the version they arrived under"
                );
            }
            *running_cost.entry(i).or_default() += dec(&bill["total"]);
            assert_eq!(
                total_cost(&app, user).await,
                running_cost[&i],
                "round {round}, user {i}"
            );
            seen.insert(i, bill);
        }
        clock.set(at(&format!("2026-{:02}-01T00:10:00Z", month + 1)));
        let res = close(&app, &finance, &period).await;
        assert_eq!(res.status(), 200);
        for (i, user) in users.iter().enumerate() {
            let bill = &seen[&i];
            let invoices: Value = app.get_json("/api/v1/invoices", &user.token).await;
            let invoice = invoices["invoices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|inv| inv["period"] == period.as_str());
            let charged: i64 = bill["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["charged_calls"].as_i64().unwrap())
                .sum();
            let Some(invoice) = invoice else {
                assert_eq!(
                    charged, 0,
                    "round {round}, user {i}: no invoice only when nothing is charged"
                );
                continue;
            };
            assert_eq!(dec(&invoice["total"]), dec(&bill["total"]), "round {round}, user {i}");
            let id = invoice["id"].as_str().unwrap();
            let detail: Value = app.get_json(&format!("/api/v1/invoices/{id}"), &user.token).await;
            let line_sum: Decimal = detail["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| dec(&l["amount"]))
                .sum();
            assert_eq!(line_sum, dec(&detail["total"]), "lines sum to the total");
            let (lines, seen_lines) = (detail["lines"].as_array().unwrap(), bill["lines"].as_array().unwrap());
            assert_eq!(
                lines.len(),
                seen_lines.len(),
                "round {round}, user {i}: the invoice has one line per statement line"
            );
            for (line, seen_line) in lines.iter().zip(seen_lines) {
                for field in [
                    "slug",
                    "price_id",
                    "price_effective_from",
                    "calls",
                    "failed_calls",
                    "billable_calls",
                    "free_calls",
                    "charged_calls",
                ] {
                    assert_eq!(line[field], seen_line[field], "round {round}, user {i}, {field}");
                }
                // As numbers: a zero read back from PostgreSQL is "0", not "0.00".
                assert_eq!(
                    dec(&line["amount"]),
                    dec(&seen_line["amount"]),
                    "round {round}, user {i}"
                );
            }
        }
    }
    assert!(split_lines >= 4, "months with calls under two versions: {split_lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_is_idempotent_concurrent_safe_and_numbers_are_gapless() {
    let db = TestDb::new().await;
    let clock = Arc::new(ManualClock::new(at("2026-03-05T00:00:00Z")));
    let spawn = || {
        TestApp::builder()
            .clock(clock.clone())
            .env("PAYG_CLOSE_GRACE", "876000h")
            .database(db.clone())
            .spawn()
    };
    let a = spawn().await;
    let b = spawn().await;
    let finance = a.user_with_role("finance").await;
    let mut users = vec![];
    for _ in 0..5 {
        let u = a.new_user().await;
        call(&a, &u, "/api/v1/tools/uuid", 3).await;
        users.push(u);
    }
    a.flush_meter().await;
    clock.set(at("2026-04-02T00:00:00Z"));

    let res = close(&a, &finance, "2026-04").await;
    assert_eq!(res.status(), 409, "the current period cannot be closed");
    assert_eq!(error_code(res).await, "period_open");
    assert_eq!(close(&a, &finance, "2026-09").await.status(), 409);
    assert_eq!(close(&a, &finance, "2026-3").await.status(), 400);

    let (ra, rb) = tokio::join!(close(&a, &finance, "2026-03"), close(&b, &finance, "2026-03"));
    let (ra, rb): (Value, Value) = (ra.json().await.unwrap(), rb.json().await.unwrap());
    let issued = ra["invoices_issued"].as_i64().unwrap();
    assert_eq!(issued, 5);
    assert_eq!(rb["invoices_issued"].as_i64().unwrap(), 5);
    assert_ne!(
        ra["already_closed"], rb["already_closed"],
        "exactly one of the two closes did the work"
    );
    let again: Value = close(&b, &finance, "2026-03").await.json().await.unwrap();
    assert_eq!(again["already_closed"], true);
    assert_eq!(scalar_i64(&db, "SELECT count(*) AS n FROM invoices").await, 5);

    // A second period continues the same year's sequence.
    clock.set(at("2026-04-10T00:00:00Z"));
    call(&a, &users[0], "/api/v1/tools/uuid", 2).await;
    a.flush_meter().await;
    clock.set(at("2026-05-01T01:00:00Z"));
    close(&a, &finance, "2026-04").await;
    let numbers: Value = a
        .get_json("/api/v1/finance/invoices?per_page=100", &finance.token)
        .await;
    let mut got: Vec<String> = numbers["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let want: Vec<String> = (1..=6).map(|n| format!("INV-2026-{n:06}")).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_are_private_and_finance_routes_check_the_role() {
    let (app, clock) = app_at("2026-06-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    call(&app, &alice, "/api/v1/tools/uuid", 2).await;
    app.flush_meter().await;
    let uuid_api = api_id(&app.db, "tools-uuid").await;
    clock.set(at("2026-07-01T00:11:00Z"));
    close(&app, &finance, "2026-06").await;
    let list: Value = app.get_json("/api/v1/invoices", &alice.token).await;
    let id = list["invoices"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_auth(&format!("/api/v1/invoices/{id}"), &alice.token)
            .await
            .status(),
        200
    );

    let res = app.get_auth(&format!("/api/v1/invoices/{id}"), &bob.token).await;
    assert_eq!(res.status(), 404, "another user's invoice is not found, not forbidden");
    let bobs: Value = app.get_json("/api/v1/invoices", &bob.token).await;
    assert_eq!(bobs["invoices"], json!([]));

    for path in [
        "/api/v1/finance/invoices".to_owned(),
        format!("/api/v1/finance/invoices/{id}"),
        "/api/v1/finance/invoices/export?period=2026-06".to_owned(),
        "/api/v1/finance/periods/2026-06/reconciliation".to_owned(),
        "/api/v1/admin/apis".to_owned(),
    ] {
        let res = app.get_auth(&path, &alice.token).await;
        assert_eq!(res.status(), 403, "{path}");
        assert_eq!(error_code(res).await, "forbidden");
    }
    for (path, body) in [
        ("/api/v1/finance/periods/2026-06/close".to_owned(), json!({})),
        (
            format!("/api/v1/finance/invoices/{id}/payments"),
            json!({"amount": "0.01", "reference": "x", "method": "wire"}),
        ),
        (format!("/api/v1/finance/invoices/{id}/void"), json!({})),
        (
            format!("/api/v1/admin/apis/{uuid_api}/prices"),
            json!({"unit_price": "0"}),
        ),
    ] {
        assert_eq!(app.post_auth(&path, &alice.token, &body).await.status(), 403, "{path}");
    }
    // Finance may not manage the catalog.
    assert_eq!(app.get_auth("/api/v1/admin/apis", &finance.token).await.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_never_reprices_calls_already_made() {
    let (app, clock) = app_at("2026-08-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    // Calls still in the meter's buffer when the price changes keep the
    // price they arrived under.
    call(&app, &user, "/api/v1/tools/uuid", 20).await;
    let set = schedule_price(&app, &admin, "tools-uuid", json!({"unit_price": "1.00"})).await;
    assert_eq!(
        set["price"]["effective_from"], "2026-08-10T00:00:02Z",
        "2 s ahead: {set}"
    );
    assert_eq!(set["price"]["status"], "scheduled");
    call(&app, &user, "/api/v1/tools/uuid", 5).await;
    clock.set(at("2026-08-10T00:00:01.999Z"));
    call(&app, &user, "/api/v1/tools/uuid", 5).await;
    app.flush_meter().await;
    let before: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(before["total"], "0.03", "30 × 0.001 = 0.03: {before}");

    // From its instant on, calls cost the new price; the month shows one
    // line per version.
    clock.set(at("2026-08-10T00:00:02Z"));
    call(&app, &user, "/api/v1/tools/uuid", 2).await;
    app.flush_meter().await;
    let after: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(after["total"], "2.03", "{after}");
    let lines = after["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{after}");
    assert_eq!(
        (lines[0]["calls"].as_i64(), lines[1]["calls"].as_i64()),
        (Some(30), Some(2))
    );
    assert_eq!(lines[1]["price_effective_from"], "2026-08-10T00:00:02Z");
    assert_eq!(
        (&lines[0]["amount"], &lines[1]["amount"]),
        (&json!("0.03"), &json!("2.00"))
    );

    clock.set(at("2026-09-01T00:11:00Z"));
    close(&app, &finance, "2026-08").await;
    call(&app, &user, "/api/v1/tools/uuid", 2).await;
    app.flush_meter().await;
    let sept: Value = app.get_json("/api/v1/billing/current", &user.token).await;
    assert_eq!(sept["total"], "2.00");
    let aug: Value = app.get_json("/api/v1/billing/periods/2026-08", &user.token).await;
    assert_eq!(aug["total"], "2.03");
    let invoices: Value = app.get_json("/api/v1/invoices", &user.token).await;
    let invoice_id = invoices["invoices"][0]["id"].as_str().unwrap().to_owned();
    let invoice: Value = app
        .get_json(&format!("/api/v1/invoices/{invoice_id}"), &user.token)
        .await;
    assert_eq!(invoice["total"], "2.03");
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{invoice}");
    assert_eq!(lines[1]["price_effective_from"], "2026-08-10T00:00:02Z");
    assert_eq!(total_cost(&app, &user).await, Decimal::new(403, 2));

    // A start that has passed, or is less than 2 s ahead, or not a whole
    // second, is refused; the public catalog shows the price in force.
    let id = api_id(&app.db, "tools-uuid").await;
    for start in ["2026-08", "2026-09-01T00:11:01Z", "2026-09-01T00:11:05.5Z", "tomorrow"] {
        let res = app
            .post_auth(
                &format!("/api/v1/admin/apis/{id}/prices"),
                &admin.token,
                &json!({"unit_price": "5", "effective_from": start}),
            )
            .await;
        assert_eq!(res.status(), 400, "{start}");
    }
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{id}/prices"),
            &admin.token,
            &json!({"unit_price": "5", "currency": "EUR"}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let catalog: Value = app.get_public_json("/api/v1/apis").await;
    let uuid = catalog["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["slug"] == "tools-uuid")
        .unwrap();
    assert_eq!(uuid["price"]["unit_price"], "1.00");

    // The issued invoice is immutable, down to the database.
    let res = app.db.conn().await;
    let mut conn = res;
    use diesel_async::SimpleAsyncConnection;
    assert!(conn.batch_execute("UPDATE invoice_lines SET amount = 0").await.is_err());
    assert!(conn.batch_execute("UPDATE invoices SET total = 0").await.is_err());
    assert!(conn.batch_execute("DELETE FROM invoices").await.is_err());
    // Every snapshot column, and only the transitions payments and voids make.
    for change in [
        "UPDATE invoices SET due_at = due_at + interval '1 year'",
        "UPDATE invoices SET billing_company = 'Someone Else Ltd'",
        "UPDATE invoices SET billing_tax_id = 'XX-0'",
        "UPDATE invoices SET status = 'paid', paid_at = now()",
        "UPDATE invoices SET amount_paid = total + 1",
        "UPDATE invoices SET status = 'void', amount_paid = 0.01, voided_at = now() WHERE amount_paid = 0",
        "INSERT INTO invoice_lines (invoice_id, position, api_id, api_slug, api_name, calls, failed_calls, \
         billable_calls, free_calls, charged_calls, unit_price, amount) \
         SELECT id, 99, (SELECT id FROM apis LIMIT 1), 'extra', 'Extra', 1, 0, 1, 0, 1, 1, 1 FROM invoices LIMIT 1",
    ] {
        assert!(conn.batch_execute(change).await.is_err(), "{change}");
    }
    assert!(
        conn.batch_execute("UPDATE invoices SET status = 'void', voided_at = now() WHERE amount_paid = 0")
            .await
            .is_ok(),
        "issued → void, nothing paid, is a transition the database allows"
    );
    assert!(
        conn.batch_execute("UPDATE invoices SET status = 'issued', voided_at = NULL")
            .await
            .is_err(),
        "void → issued is not"
    );
}

async fn issued_invoice(
    app: &TestApp,
    clock: &ManualClock,
    finance: &Registered,
    user: &Registered,
    calls: usize,
) -> Value {
    call(app, user, "/api/v1/tools/uuid", calls).await;
    app.flush_meter().await;
    let now = clock_now(clock);
    let next = payg::domain::Period::containing(now, chrono_tz::Tz::UTC).next();
    let this = next.previous();
    clock.set(next.starts_at(chrono_tz::Tz::UTC) + chrono::Duration::minutes(11));
    close(app, finance, &this.to_string()).await;
    let list: Value = app.get_json("/api/v1/invoices", &user.token).await;
    list["invoices"][0].clone()
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use payg::domain::Clock;
    clock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_idempotent_and_settle_the_invoice() {
    let (app, clock) = app_at("2026-02-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    set_price(&app, &clock, &admin, "tools-uuid", json!({"unit_price": "1.25"})).await;
    let invoice = issued_invoice(&app, &clock, &finance, &user, 4).await;
    assert_eq!(invoice["total"], "5.00");
    assert_eq!(invoice["status"], "issued");
    let id = invoice["id"].as_str().unwrap();
    let path = format!("/api/v1/finance/invoices/{id}/payments");
    let pay = |body: Value| {
        let (app, path, token) = (&app, path.clone(), finance.token.clone());
        async move { app.post_auth(&path, &token, &body).await }
    };

    let res = pay(json!({"amount": "2.00", "reference": "wire-1", "method": "wire"})).await;
    assert_eq!(res.status(), 201);
    let res = pay(json!({"amount": "2.00", "reference": "wire-1", "method": "wire"})).await;
    assert_eq!(res.status(), 200, "the same reference again is the same payment");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["invoice"]["amount_paid"], "2.00");
    assert_eq!(
        pay(json!({"amount": "3.00", "reference": "wire-1", "method": "wire"}))
            .await
            .status(),
        409
    );

    for (body, status, code) in [
        (
            json!({"amount": "3.01", "reference": "wire-2", "method": "wire"}),
            422,
            "overpayment",
        ),
        (
            json!({"amount": "3.00", "reference": "wire-2", "method": "wire", "currency": "EUR"}),
            422,
            "currency_mismatch",
        ),
        (
            json!({"amount": "-1", "reference": "wire-2", "method": "wire"}),
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "0.001", "reference": "wire-2", "method": "wire"}),
            400,
            "validation_failed",
        ),
        (
            json!({"amount": 3.0, "reference": "wire-2", "method": "wire"}),
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "3e0", "reference": "wire-2", "method": "wire"}),
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "3_00", "reference": "wire-2", "method": "wire"}),
            400,
            "validation_failed",
        ),
    ] {
        let res = pay(body.clone()).await;
        assert_eq!(res.status(), status, "{body}");
        assert_eq!(error_code(res).await, code, "{body}");
    }
    let res = pay(json!({"amount": "3.00", "reference": "wire-2", "method": "wire", "currency": "usd"})).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["invoice"]["status"], "paid");
    assert_eq!(body["invoice"]["amount_paid"], "5.00");
    assert_eq!(
        pay(json!({"amount": "0.01", "reference": "wire-3", "method": "wire"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        app.post_auth(
            &format!("/api/v1/finance/invoices/{id}/void"),
            &finance.token,
            &json!({})
        )
        .await
        .status(),
        409,
        "a paid invoice cannot be voided"
    );
    assert_eq!(scalar_i64(&app.db, "SELECT count(*) AS n FROM payments").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_issued_invoice_can_be_voided_and_then_not_paid() {
    let (app, clock) = app_at("2026-02-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let invoice = issued_invoice(&app, &clock, &finance, &user, 30).await;
    let id = invoice["id"].as_str().unwrap();
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/payments"),
            &finance.token,
            &json!({"amount": "0.03", "reference": "r", "method": "card"}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 409);
}

fn signed(secret: &str, t: i64, body: &str) -> String {
    format!(
        "t={t},v1={}",
        payg::billing::payments::sign(secret.as_bytes(), t, body.as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_webhook_checks_signatures_and_applies_each_event_once() {
    let clock = Arc::new(ManualClock::new(at("2026-02-10T00:00:00Z")));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .env("PAYG_WEBHOOK_SECRET", "whsec_test_0123456789abcdef0123456789")
        .spawn()
        .await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let invoice = issued_invoice(&app, &clock, &finance, &user, 1500).await;
    assert_eq!(invoice["total"], "1.50");
    let number = invoice["number"].as_str().unwrap();
    let event = json!({"id": "evt_1", "type": "payment.succeeded", "invoice_number": number,
                       "amount": "1.50", "currency": "USD", "reference": "ch_1"})
    .to_string();
    let now = clock_now(&clock).timestamp();
    let send = |sig: Option<String>, body: String| {
        let mut req = app
            .client
            .post(app.url("/api/v1/webhooks/payments"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = sig {
            req = req.header("Payg-Signature", sig);
        }
        req.send()
    };
    for (sig, code) in [
        (None, "invalid_signature"),
        (Some(signed("wrong-secret", now, &event)), "invalid_signature"),
        (
            Some(signed("whsec_test_0123456789abcdef0123456789", now - 301, &event)),
            "stale_signature",
        ),
        (Some(format!("t={now},v1=zz")), "invalid_signature"),
    ] {
        let res = send(sig, event.clone()).await.unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(error_code(res).await, code);
    }
    // A body changed after signing does not verify.
    let tampered = event.replace("1.50", "0.01");
    let res = send(
        Some(signed("whsec_test_0123456789abcdef0123456789", now, &event)),
        tampered,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    // Signed, but not an amount as the spec writes one, or without a
    // currency: refused before anything is recorded.
    for bad in [
        json!({"id": "evt_bad_1", "type": "payment.succeeded", "invoice_number": number,
               "amount": "1.5e0", "currency": "USD", "reference": "ch_bad"}),
        json!({"id": "evt_bad_2", "type": "payment.succeeded", "invoice_number": number,
               "amount": "1_50", "currency": "USD", "reference": "ch_bad"}),
        json!({"id": "evt_bad_3", "type": "payment.succeeded", "invoice_number": number,
               "amount": "1.50", "reference": "ch_bad"}),
    ] {
        let body = bad.to_string();
        let res = send(Some(signed("whsec_test_0123456789abcdef0123456789", now, &body)), body)
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    assert_eq!(
        scalar_i64(&app.db, "SELECT count(*) AS n FROM payments").await,
        0,
        "nothing changed"
    );

    let res = send(
        Some(signed("whsec_test_0123456789abcdef0123456789", now, &event)),
        event.clone(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["invoice"]["status"], "paid");
    let res = send(
        Some(signed("whsec_test_0123456789abcdef0123456789", now + 5, &event)),
        event.clone(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "duplicate");
    assert_eq!(scalar_i64(&app.db, "SELECT count(*) AS n FROM payments").await, 1);

    let other = json!({"id": "evt_2", "type": "customer.updated"}).to_string();
    let res = send(
        Some(signed("whsec_test_0123456789abcdef0123456789", now, &other)),
        other,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_invoice_blocks_metered_calls_until_it_is_paid() {
    let (app, clock) = app_at("2026-02-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let invoice = issued_invoice(&app, &clock, &finance, &user, 20).await;
    let id = invoice["id"].as_str().unwrap();
    // Due 14 days after issue, blocked 30 days after that.
    clock.set(at("2026-04-14T00:00:00Z"));
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    clock.set(at("2026-04-16T00:00:00Z"));
    let res = app.get_auth("/api/v1/tools/uuid", &user.token).await;
    assert_eq!(res.status(), 402);
    assert_eq!(error_code(res).await, "payment_required");
    assert_eq!(
        app.get_auth("/api/v1/me", &user.token).await.status(),
        200,
        "only metered APIs are blocked"
    );
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/payments"),
            &finance.token,
            &json!({"amount": "0.02", "reference": "late", "method": "card"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_that_lands_after_close_shows_in_reconciliation() {
    let (app, clock) = app_at("2026-05-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    call(&app, &user, "/api/v1/tools/uuid", 10).await;
    app.flush_meter().await;
    clock.set(at("2026-06-01T00:11:00Z"));
    close(&app, &finance, "2026-05").await;
    let clean: Value = app
        .get_json("/api/v1/finance/periods/2026-05/reconciliation", &finance.token)
        .await;
    assert_eq!(clean["discrepancies"], json!([]));
    assert_eq!(clean["unbilled_total"], "0.00");

    // Calls that arrived in May but were recorded after the close.
    clock.set(at("2026-05-31T23:59:59Z"));
    call(&app, &user, "/api/v1/tools/uuid", 15).await;
    app.flush_meter().await;
    let report: Value = app
        .get_json("/api/v1/finance/periods/2026-05/reconciliation", &finance.token)
        .await;
    assert_eq!(report["closed"], true);
    let d = &report["discrepancies"][0];
    assert_eq!(
        (d["recorded_calls"].as_i64(), d["invoiced_calls"].as_i64()),
        (Some(25), Some(10))
    );
    assert_eq!(d["unbilled_amount"], "0.01"); // 0.025 → 0.02 minus 0.01
    assert_eq!(report["unbilled_total"], "0.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_closes_the_previous_period_after_the_grace() {
    let clock = Arc::new(ManualClock::new(at("2026-10-20T00:00:00Z")));
    let first = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .spawn()
        .await;
    let user = first.new_user().await;
    call(&first, &user, "/api/v1/tools/uuid", 10).await;
    first.flush_meter().await;
    // Another instance starts 11 minutes into November with the default 10 minute grace.
    clock.set(at("2026-11-01T00:11:00Z"));
    let second = TestApp::builder()
        .clock(clock.clone())
        .database(first.db.clone())
        .spawn()
        .await;
    for _ in 0..100 {
        if scalar_i64(&second.db, "SELECT count(*) AS n FROM closed_periods").await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        scalar_i64(
            &second.db,
            "SELECT count(*) AS n FROM invoices WHERE period = '2026-10-01'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_flood_from_one_address_is_refused_before_any_hmac() {
    let app = TestApp::builder()
        .env("PAYG_WEBHOOK_SECRET", "whsec_test_0123456789abcdef0123456789")
        .env("PAYG_CLIENT_WEBHOOK_PER_MINUTE", "1")
        .env("PAYG_CLIENT_WEBHOOK_BURST", "2")
        .spawn()
        .await;
    let forged = || {
        app.client
            .post(app.url("/api/v1/webhooks/payments"))
            .header("content-type", "application/json")
            .header(
                "Payg-Signature",
                format!("t={},v1={}", Utc::now().timestamp(), "0".repeat(64)),
            )
            .body(r#"{"id":"evt_x","type":"payment.succeeded"}"#)
            .send()
    };
    for _ in 0..2 {
        let res = forged().await.unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(error_code(res).await, "invalid_signature");
    }
    let res = forged().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_code(res).await, "too_many_requests");
}
