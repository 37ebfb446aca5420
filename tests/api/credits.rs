//! Prepaid credit: idempotent top-ups (finance and the payment webhook),
//! usage drawing on the balance as it is flushed, invoices showing the
//! credit applied and what is due, credit given back on a void, and the
//! ledger property: the balance is always the sum of the movements.

use std::sync::Arc;

use payg::domain::ManualClock;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Registered, TestApp, api_id, at, dec, error_code, scalar_i64};

const SECRET: &str = "whsec_test_credits_0123456789abcdef";

async fn app_at(now: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(at(now)));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .env("PAYG_WEBHOOK_SECRET", SECRET)
        .spawn()
        .await;
    (app, clock)
}

async fn top_up(app: &TestApp, finance: &Registered, user: Uuid, body: Value) -> reqwest::Response {
    app.post_auth(&format!("/api/v1/finance/users/{user}/credits"), &finance.token, &body)
        .await
}

/// 0.01 a call on tools-uuid from 2 s after `now`; the clock is moved there.
async fn cent_a_call(app: &TestApp, clock: &ManualClock, admin: &Registered) {
    let uuid = api_id(&app.db, "tools-uuid").await;
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{uuid}/prices"),
            &admin.token,
            &json!({"unit_price": "0.01"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let set: Value = res.json().await.unwrap();
    clock.set(at(set["price"]["effective_from"].as_str().unwrap()));
}

async fn calls(app: &TestApp, user: &Registered, n: usize) {
    for _ in 0..n {
        assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    }
    app.flush_meter().await;
}

async fn balance_and_ledger_sum(app: &TestApp, user: Uuid) -> (Decimal, Decimal) {
    let row = app
        .sql_row(&format!(
            "SELECT u.credit_balance::text AS a, coalesce(sum(m.amount), 0)::text AS b \
             FROM users u LEFT JOIN credit_movements m ON m.user_id = u.id WHERE u.id = '{user}' GROUP BY u.id"
        ))
        .await;
    (row[0].parse().unwrap(), row[1].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ups_are_idempotent_on_their_reference_and_checked() {
    let (app, _clock) = app_at("2026-03-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let other = app.new_user().await;

    let res = top_up(
        &app,
        &finance,
        user.id,
        json!({"amount": "25.00", "reference": "wire-881"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["balance"], "25.00");
    assert_eq!(first["movement"]["kind"], "top_up");
    let again = top_up(
        &app,
        &finance,
        user.id,
        json!({"amount": "25.00", "reference": "wire-881"}),
    )
    .await;
    assert_eq!(again.status(), 200, "the same body again");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["movement"]["id"], first["movement"]["id"]);
    assert_eq!(again["balance"], "25.00", "added once");

    for (body, who, status, code) in [
        (
            json!({"amount": "30.00", "reference": "wire-881"}),
            user.id,
            409,
            "reference_reused",
        ),
        (
            json!({"amount": "25.00", "reference": "wire-881"}),
            other.id,
            409,
            "reference_reused",
        ),
        (
            json!({"amount": "0", "reference": "wire-2"}),
            user.id,
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "-5.00", "reference": "wire-3"}),
            user.id,
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "1.001", "reference": "wire-4"}),
            user.id,
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "5", "reference": "   "}),
            user.id,
            400,
            "validation_failed",
        ),
        (
            json!({"amount": "5", "reference": "wire-5", "currency": "EUR"}),
            user.id,
            422,
            "currency_mismatch",
        ),
        (
            json!({"amount": "5", "reference": "wire-6"}),
            Uuid::new_v4(),
            404,
            "not_found",
        ),
    ] {
        let res = top_up(&app, &finance, who, body.clone()).await;
        assert_eq!(res.status(), status, "{body}");
        assert_eq!(error_code(res).await, code, "{body}");
    }
    let res = top_up(&app, &user, user.id, json!({"amount": "5", "reference": "self"})).await;
    assert_eq!(res.status(), 403, "a consumer cannot add credit");

    let mine: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!(mine["balance"], "25.00");
    assert_eq!(mine["movements"].as_array().map(Vec::len), Some(1), "{mine}");
    let seen: Value = app
        .get_json(&format!("/api/v1/finance/users/{}/credits", user.id), &finance.token)
        .await;
    assert_eq!(seen["movements"], mine["movements"]);
    let theirs: Value = app.get_json("/api/v1/credits", &other.token).await;
    assert_eq!(
        (theirs["balance"].as_str(), theirs["total"].as_i64()),
        (Some("0"), Some(0))
    );
    assert_eq!(
        balance_and_ledger_sum(&app, user.id).await,
        (Decimal::new(2500, 2), Decimal::new(2500, 2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_draws_on_credit_as_it_is_flushed_and_the_invoice_shows_what_is_due() {
    let (app, clock) = app_at("2026-03-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let partly = app.new_user().await;
    let fully = app.new_user().await;
    cent_a_call(&app, &clock, &admin).await;
    for (user, amount, reference) in [(&partly, "0.10", "wire-p"), (&fully, "1.00", "wire-f")] {
        let res = top_up(
            &app,
            &finance,
            user.id,
            json!({"amount": amount, "reference": reference}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }

    calls(&app, &partly, 5).await;
    let ledger: Value = app.get_json("/api/v1/credits", &partly.token).await;
    assert_eq!(ledger["balance"], "0.05", "live: {ledger}");
    let usage = &ledger["movements"][0];
    assert_eq!(
        (&usage["kind"], &usage["amount"], &usage["period"]),
        (&json!("usage"), &json!("-0.05"), &json!("2026-03"))
    );
    calls(&app, &partly, 10).await;
    let ledger: Value = app.get_json("/api/v1/credits", &partly.token).await;
    assert_eq!(ledger["balance"], "0.00", "never below zero: {ledger}");
    assert_eq!(
        ledger["movements"][0]["amount"], "-0.10",
        "one usage movement per period"
    );
    assert_eq!(ledger["total"], 2);
    calls(&app, &fully, 30).await;

    clock.set(at("2026-04-01T00:11:00Z"));
    let res = app
        .post_auth("/api/v1/finance/periods/2026-03/close", &finance.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let invoice = |user: &Registered| {
        let (app, token) = (&app, user.token.clone());
        async move {
            let list: Value = app.get_json("/api/v1/invoices", &token).await;
            list["invoices"][0].clone()
        }
    };
    let owed = invoice(&partly).await;
    assert_eq!(
        (
            &owed["total"],
            &owed["credit_applied"],
            &owed["amount_due"],
            &owed["status"]
        ),
        (&json!("0.15"), &json!("0.10"), &json!("0.05"), &json!("issued")),
        "{owed}"
    );
    let covered = invoice(&fully).await;
    assert_eq!(
        (
            &covered["total"],
            &covered["credit_applied"],
            &covered["amount_due"],
            &covered["status"]
        ),
        (&json!("0.30"), &json!("0.30"), &json!("0.00"), &json!("paid")),
        "an invoice fully paid by credit is paid: {covered}"
    );

    // Payments cover what is due, not the whole total.
    let id = owed["id"].as_str().unwrap();
    let pay = |amount: &str, reference: &str| {
        let body = json!({"amount": amount, "reference": reference, "method": "wire"});
        let (app, token, path) = (
            &app,
            finance.token.clone(),
            format!("/api/v1/finance/invoices/{id}/payments"),
        );
        async move { app.post_auth(&path, &token, &body).await }
    };
    let res = pay("0.06", "pay-over").await;
    assert_eq!(res.status(), 422);
    assert_eq!(error_code(res).await, "overpayment");
    let res = pay("0.05", "pay-due").await;
    assert_eq!(res.status(), 201);
    let paid: Value = res.json().await.unwrap();
    assert_eq!(
        (&paid["invoice"]["status"], &paid["invoice"]["amount_due"]),
        (&json!("paid"), &json!("0.00"))
    );

    // Paid by credit alone, an invoice can still be voided: its credit
    // comes back, and nothing is due on it.
    let covered_id = covered["id"].as_str().unwrap();
    let before: Value = app.get_json("/api/v1/credits", &fully.token).await;
    assert_eq!(before["balance"], "0.70");
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{covered_id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let voided: Value = res.json().await.unwrap();
    assert_eq!(
        (&voided["status"], &voided["amount_due"]),
        (&json!("void"), &json!("0"))
    );
    let after: Value = app.get_json("/api/v1/credits", &fully.token).await;
    assert_eq!(after["balance"], "1.00", "{after}");
    assert_eq!(after["movements"][0]["invoice_id"], json!(covered_id));
    // An invoice someone paid cannot be voided.
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 409);
    for user in [&partly, &fully] {
        let (balance, sum) = balance_and_ledger_sum(&app, user.id).await;
        assert_eq!(balance, sum);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voided_invoice_gives_back_the_credit_it_applied() {
    let (app, clock) = app_at("2026-03-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    cent_a_call(&app, &clock, &admin).await;
    assert_eq!(
        top_up(&app, &finance, user.id, json!({"amount": "0.10", "reference": "w-1"}))
            .await
            .status(),
        201
    );
    calls(&app, &user, 25).await;
    clock.set(at("2026-04-01T00:11:00Z"));
    let res = app
        .post_auth("/api/v1/finance/periods/2026-03/close", &finance.token, &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let list: Value = app.get_json("/api/v1/invoices", &user.token).await;
    let invoice = &list["invoices"][0];
    assert_eq!(
        (&invoice["credit_applied"], &invoice["amount_due"]),
        (&json!("0.10"), &json!("0.15"))
    );
    let id = invoice["id"].as_str().unwrap();
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let ledger: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!(ledger["balance"], "0.10", "{ledger}");
    assert_eq!(ledger["movements"][0]["kind"], "adjustment");
    // Calls after the close draw on it for the new period only.
    calls(&app, &user, 3).await;
    let ledger: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!(ledger["balance"], "0.07", "{ledger}");
    let (balance, sum) = balance_and_ledger_sum(&app, user.id).await;
    assert_eq!(balance, sum);

    // Credit given back is credit added: using it up is news again
    // (`credits.exhausted` once per credit added, not per top-up).
    let exhausted = format!(
        "SELECT count(*) AS n FROM outbound_events WHERE event_type = 'credits.exhausted' AND user_id = '{}'",
        user.id
    );
    assert_eq!(scalar_i64(&app.db, &exhausted).await, 1);
    // 7 calls use the 0.07 up; 2 more at a zero balance say nothing new.
    calls(&app, &user, 7).await;
    calls(&app, &user, 2).await;
    let ledger: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!(ledger["balance"], "0.00", "{ledger}");
    assert_eq!(scalar_i64(&app.db, &exhausted).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_webhook_adds_credit_once_per_event_and_reference() {
    let (app, clock) = app_at("2026-03-10T00:00:00Z").await;
    let user = app.new_user().await;
    let now = {
        use payg::domain::Clock;
        clock.now().timestamp()
    };
    let send = |body: Value| {
        let body = body.to_string();
        let sig = format!(
            "t={now},v1={}",
            payg::billing::payments::sign(SECRET.as_bytes(), now, body.as_bytes())
        );
        app.client
            .post(app.url("/api/v1/webhooks/payments"))
            .header("content-type", "application/json")
            .header("Payg-Signature", sig)
            .body(body)
            .send()
    };
    let event = |id: &str, amount: &str| {
        json!({"id": id, "type": "credits.purchased", "user_id": user.id, "amount": amount,
               "currency": "USD", "reference": "ch_credit_1"})
    };
    let res = send(event("evt_c1", "10.00")).await.unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (&body["balance"], &body["movement"]["source"]),
        (&json!("10.00"), &json!("webhook"))
    );
    let res = send(event("evt_c1", "10.00")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "duplicate");
    let res = send(event("evt_c2", "10.00")).await.unwrap();
    assert_eq!(res.status(), 200, "the same reference under another event id");
    let res = send(event("evt_c3", "12.00")).await.unwrap();
    assert_eq!(res.status(), 409);
    let res = send(
        json!({"id": "evt_c4", "type": "credits.purchased", "amount": "1.00", "currency": "USD",
                          "reference": "ch_2"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400, "no user_id");
    let res = send(
        json!({"id": "evt_c5", "type": "credits.purchased", "user_id": "cus_123", "amount": "1.00",
                          "currency": "USD", "reference": "ch_3"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400, "not a user's id");
    assert_eq!(error_code(res).await, "validation_failed");
    // Other event types are acknowledged whatever their user_id looks like.
    let res = send(json!({"id": "evt_c6", "type": "customer.updated", "user_id": "cus_123"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ledger: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!(ledger["balance"], "10.00");
}

/// Eight identical top-ups at once: one adds the credit, the others find
/// it (the reference's unique index settles the race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_top_ups_with_one_reference_add_credit_once() {
    let (app, _clock) = app_at("2026-03-10T00:00:00Z").await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let body = json!({"amount": "3.00", "reference": "wire-race"});
    let tries = (0..8).map(|_| top_up(&app, &finance, user.id, body.clone()));
    let answers = futures_util::future::join_all(tries).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 201]);
    let ledger: Value = app.get_json("/api/v1/credits", &user.token).await;
    assert_eq!((&ledger["balance"], &ledger["total"]), (&json!("3.00"), &json!(1)));
}

/// Property: whatever happens — top-ups, calls at random prices, closes,
/// voids, payments — every user's balance equals the sum of their ledger
/// and is never negative, and an invoice never applies more credit than
/// its total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_is_always_the_sum_of_the_ledger() {
    let (app, clock) = app_at("2026-01-10T00:00:00Z").await;
    let admin = app.user_with_role("admin").await;
    let finance = app.user_with_role("finance").await;
    let users = [app.new_user().await, app.new_user().await, app.new_user().await];
    let uuid = api_id(&app.db, "tools-uuid").await;
    let mut rng = StdRng::seed_from_u64(0xc4ed17);
    let mut reference = 0;
    let (mut credited, mut voided) = (0, 0);
    for month in 1..=3u32 {
        clock.set(at(&format!("2026-{month:02}-10T00:00:00Z")));
        for _step in 0..4 {
            let unit = Decimal::new(rng.random_range(0..300), 3);
            let res = app
                .post_auth(
                    &format!("/api/v1/admin/apis/{uuid}/prices"),
                    &admin.token,
                    &json!({"unit_price": unit.to_string(), "free_calls": rng.random_range(0..3)}),
                )
                .await;
            let set: Value = res.json().await.unwrap();
            clock.set(at(set["price"]["effective_from"].as_str().unwrap()));
            for user in &users {
                if rng.random_range(0..3) == 0 {
                    reference += 1;
                    let amount = Decimal::new(rng.random_range(1..200), 2);
                    let res = top_up(
                        &app,
                        &finance,
                        user.id,
                        json!({"amount": amount.to_string(), "reference": format!("p-{reference}")}),
                    )
                    .await;
                    assert_eq!(res.status(), 201);
                }
                for _ in 0..rng.random_range(0..15) {
                    app.get_auth("/api/v1/tools/uuid", &user.token).await;
                }
            }
            app.flush_meter().await;
            for user in &users {
                let (balance, sum) = balance_and_ledger_sum(&app, user.id).await;
                assert_eq!(balance, sum, "month {month}");
                assert!(balance >= Decimal::ZERO);
            }
        }
        clock.set(at(&format!("2026-{:02}-01T00:11:00Z", month + 1)));
        let res = app
            .post_auth(
                &format!("/api/v1/finance/periods/2026-{month:02}/close"),
                &finance.token,
                &json!({}),
            )
            .await;
        assert_eq!(res.status(), 200);
        for user in &users {
            let list: Value = app.get_json("/api/v1/invoices", &user.token).await;
            let Some(invoice) = list["invoices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["period"] == format!("2026-{month:02}"))
            else {
                continue;
            };
            let (total, credit, due) = (
                dec(&invoice["total"]),
                dec(&invoice["credit_applied"]),
                dec(&invoice["amount_due"]),
            );
            assert!(credit <= total && due == total - credit, "{invoice}");
            credited += usize::from(credit > Decimal::ZERO);
            let drawn = app
                .sql_row(&format!(
                    "SELECT coalesce(sum(-amount), 0)::text AS a, '' AS b FROM credit_movements \
                     WHERE user_id = '{}' AND kind = 'usage' AND period = DATE '2026-{month:02}-01'",
                    user.id
                ))
                .await;
            assert_eq!(
                credit,
                drawn[0].parse::<Decimal>().unwrap(),
                "the invoice applies what the month drew"
            );
            let id = invoice["id"].as_str().unwrap();
            match rng.random_range(0..3) {
                0 if invoice["status"] == "issued" => {
                    let res = app
                        .post_auth(
                            &format!("/api/v1/finance/invoices/{id}/void"),
                            &finance.token,
                            &json!({}),
                        )
                        .await;
                    assert_eq!(res.status(), 200);
                    voided += 1;
                }
                1 if due > Decimal::ZERO => {
                    reference += 1;
                    let res = app
                        .post_auth(
                            &format!("/api/v1/finance/invoices/{id}/payments"),
                            &finance.token,
                            &json!({"amount": due.to_string(), "reference": format!("pay-{reference}"), "method": "wire"}),
                        )
                        .await;
                    assert_eq!(res.status(), 201);
                }
                _ => {}
            }
            let (balance, sum) = balance_and_ledger_sum(&app, user.id).await;
            assert_eq!(balance, sum, "after month {month}'s close");
        }
    }
    assert!(
        credited >= 2 && voided >= 1,
        "credit applied {credited} times, {voided} voids"
    );
}
