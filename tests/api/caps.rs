//! Spending caps and prepaid-only: a capped user's calls are admitted from
//! budget leased from PostgreSQL, so the period's charge never passes the
//! cap (nor a prepaid-only user's balance) — with 64 clients on three
//! instances, across a Redis restart — and refused calls are neither
//! served nor billed. Who may set which cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{OwnRedis, Registered, TestApp, TestDb, dec, error_code, free_port, this_period, usage_of};

/// Every API's price from the start of time, in place of the seeded one
/// (no call has been counted yet).
async fn price_every_call(app: &TestApp, slug: &str, unit_price: &str) {
    app.sql(&format!(
        "UPDATE prices SET unit_price = {unit_price} WHERE api_id = (SELECT id FROM apis WHERE slug = '{slug}')"
    ))
    .await;
}

/// What the user's calls this period cost: the exact sum of every line's
/// calls at its price (flat prices here), and the statement's total of
/// rounded lines (what the invoice will say).
async fn charged(app: &TestApp, user: &Registered) -> (Decimal, Decimal) {
    let row = app
        .sql_row(&format!(
            "SELECT coalesce(sum((v.calls - v.failed_calls) * p.unit_price), 0)::text AS a, '' AS b \
             FROM usage_prices v JOIN prices p ON p.id = v.price_id \
             WHERE v.user_id = '{}' AND v.period = DATE '{}'",
            user.id,
            this_period()
        ))
        .await;
    let statement = app.get_json("/api/v1/billing/current", &user.token).await;
    (row[0].parse().unwrap(), dec(&statement["total"]))
}

async fn call(app: &TestApp, path: &str, user: &Registered) -> (u16, String) {
    let res = app.get_auth(path, &user.token).await;
    let status = res.status().as_u16();
    let code = if status == 200 {
        String::new()
    } else {
        error_code(res).await
    };
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cap_is_never_exceeded_by_64_clients_on_three_instances_across_a_redis_restart() {
    const CLIENTS: usize = 64;
    let cap = dec!(3.00);
    let db = TestDb::new().await;
    let mut redis = OwnRedis::start(free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = format!("payg-test-{}:", Uuid::new_v4().simple());
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(
            TestApp::builder()
                .instance_of(&db, &prefix)
                .env("REDIS_URL", &redis_url)
                .env("PAYG_AUTH_CACHE_MS", "600000")
                .spawn()
                .await,
        );
    }
    let first = &instances[0];
    // Odd prices, so rounding matters: two lines, each rounded.
    price_every_call(first, "tools-uuid", "0.0037").await;
    price_every_call(first, "tools-time", "0.0051").await;
    let user = first.new_user().await;
    let res = first
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "3"}))
        .await;
    assert_eq!(res.status(), 200);
    let set: Value = res.json().await.unwrap();
    assert_eq!(set["amount"], "3.00");

    let urls: Vec<String> = instances
        .iter()
        .flat_map(|a| [a.url("/api/v1/tools/uuid"), a.url("/api/v1/tools/time")])
        .collect();
    let client = first.client.clone();
    let (ok, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let run_for = Duration::from_secs(4);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (client, urls, token) = (client.clone(), urls.clone(), user.token.clone());
            let (ok, refused, other) = (ok.clone(), refused.clone(), other.clone());
            tokio::spawn(async move {
                let mut n = i;
                while started.elapsed() < run_for {
                    let res = client
                        .get(&urls[n % urls.len()])
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let counter = match status {
                        200 => &ok,
                        402 => {
                            let body: Value = res.json().await.unwrap();
                            assert_eq!(body["error"]["code"], "spending_cap_reached");
                            &refused
                        }
                        _ => &other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    // Redis goes away mid-load, with the cap far from reached, and comes
    // back empty.
    while ok.load(Ordering::Relaxed) < 150 && started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let served_before_restart = ok.load(Ordering::Relaxed);
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = OwnRedis::start(redis.port);
    for task in tasks {
        task.await.unwrap();
    }
    let (ok, refused, other) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    assert_eq!(other, 0, "every call was served or refused for the cap");
    assert!(
        (100..ok.saturating_sub(50)).contains(&served_before_restart),
        "Redis restarted after {served_before_restart} of {ok} calls: not mid-load"
    );
    assert!(refused > 0, "the clients did press past the cap");
    for app in &instances {
        app.flush_meter().await;
    }
    let (exact, total) = charged(first, &user).await;
    println!("cap 3.00: {ok} calls served, {refused} refused; charged {exact} exactly, {total} as invoiced");
    assert!(exact <= cap, "charged {exact} exactly, past the cap");
    assert!(total <= cap, "the invoice's total {total} is past the cap");
    // Refused calls were not counted: every counted call was served.
    let (uuid_calls, uuid_failed) = usage_of(&db, user.id, "tools-uuid", &this_period()).await;
    let (time_calls, time_failed) = usage_of(&db, user.id, "tools-time", &this_period()).await;
    assert_eq!((uuid_failed, time_failed), (0, 0));
    assert_eq!(u64::try_from(uuid_calls + time_calls).unwrap(), ok);

    // Refused early only by what the instances still held: once idle
    // budget is given back, the last of it is spent, down to less than the
    // rounding and one call per line.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for path in ["/api/v1/tools/uuid", "/api/v1/tools/time"] {
        while call(first, path, &user).await.0 == 200 {}
    }
    first.flush_meter().await;
    let (exact, total) = charged(first, &user).await;
    println!("then spent down to {exact} exactly, {total} as invoiced");
    assert!(exact <= cap && total <= cap);
    assert!(cap - exact < dec!(0.02), "{exact} leaves too much of the cap unspent");
    let view = first.get_json("/api/v1/billing/cap", &user.token).await;
    assert_eq!(dec(&view["charged"]), total);
    assert_eq!(dec(&view["remaining"]), cap - total);
    let held = first
        .sql_row("SELECT coalesce(sum(held), 0)::text AS a, '' AS b FROM spend_leases")
        .await;
    assert!(
        held[0].parse::<Decimal>().unwrap() <= dec!(0.02),
        "budget left held: {}",
        held[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_are_not_billed_and_a_finance_cap_can_be_lowered_not_raised() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let cap_path = format!("/api/v1/finance/users/{}/cap", user.id);

    let view = app.get_json("/api/v1/billing/cap", &user.token).await;
    assert_eq!(view["amount"], Value::Null);
    assert_eq!(view["prepaid_only"], false);
    // Not capped: nothing reserved, nothing leased.
    assert_eq!(call(&app, "/api/v1/tools/uuid", &user).await.0, 200);

    let res = app
        .put_auth(&cap_path, &finance.token, &json!({"amount": "0.02"}))
        .await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(
        (view["amount"].as_str(), view["finance_cap"].as_str()),
        (Some("0.02"), Some("0.02"))
    );
    assert_eq!(
        app.put_auth(&cap_path, &user.token, &json!({"amount": "1"}))
            .await
            .status(),
        403
    );

    for raise in [json!({"amount": "0.03"}), json!({"amount": null})] {
        let res = app.put_auth("/api/v1/billing/cap", &user.token, &raise).await;
        assert_eq!(res.status(), 409, "{raise}");
        assert_eq!(error_code(res).await, "cap_set_by_finance");
    }
    for bad in [
        json!({"amount": "-1"}),
        json!({"amount": "0.001"}),
        json!({"amount": 5}),
        json!({}),
        json!({"amount": "1", "extra": true}),
    ] {
        let res = app.put_auth("/api/v1/billing/cap", &user.token, &bad).await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "0.01"}))
        .await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(
        (
            view["amount"].as_str(),
            view["user_cap"].as_str(),
            view["finance_cap"].as_str()
        ),
        (Some("0.01"), Some("0.01"), Some("0.02"))
    );

    // The seeded price, 0.001 a call: the first call reserves its line's
    // rounding too, so a cap of 0.01 admits 4 more calls after the
    // uncapped one (0.005 + 0.001 counted, 0.005 rounding).
    let mut served = 0;
    loop {
        let (status, code) = call(&app, "/api/v1/tools/uuid", &user).await;
        if status != 200 {
            assert_eq!((status, code.as_str()), (402, "spending_cap_reached"));
            break;
        }
        served += 1;
        assert!(served < 100, "never refused");
    }
    app.flush_meter().await;
    let (calls, failed) = usage_of(&app.db, user.id, "tools-uuid", &this_period()).await;
    assert_eq!((calls, failed), (1 + served, 0), "the refused call is not counted");
    let (exact, total) = charged(&app, &user).await;
    println!("cap 0.01: {served} calls served after the uncapped one, charged {exact} ({total} rounded)");
    assert!(
        exact <= dec!(0.01) && total <= dec!(0.01),
        "{served} more served: {exact} / {total}"
    );
    assert!(dec!(0.01) - exact <= dec!(0.006), "{exact}: refused far too early");

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("payg_spending_refusals_total{code=\"spending_cap_reached\"} 1"),
        "the refusal is counted"
    );

    // Raised (by finance's own cap going up and the user's removed): calls
    // are admitted again at once.
    let res = app
        .put_auth(&cap_path, &finance.token, &json!({"amount": "0.05"}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "0.05"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(call(&app, "/api/v1/tools/uuid", &user).await.0, 200);
    // Finance removes its cap; the user may then remove theirs.
    let res = app.put_auth(&cap_path, &finance.token, &json!({"amount": null})).await;
    assert_eq!(res.status(), 200);
    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": null}))
        .await;
    assert_eq!(res.status(), 200);
    let view = app.get_json(&cap_path, &finance.token).await;
    assert_eq!(view["amount"], Value::Null);
    let unknown = format!("/api/v1/finance/users/{}/cap", Uuid::new_v4());
    assert_eq!(app.get_auth(&unknown, &finance.token).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_only_user_never_spends_past_their_balance() {
    let app = TestApp::spawn().await;
    let finance = app.user_with_role("finance").await;
    let user = app.new_user().await;
    let cap_path = format!("/api/v1/finance/users/{}/cap", user.id);
    price_every_call(&app, "tools-uuid", "0.003").await;

    let res = app
        .put_auth(
            &cap_path,
            &finance.token,
            &json!({"amount": null, "prepaid_only": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(
        (view["amount"].clone(), view["prepaid_only"].clone()),
        (Value::Null, json!(true))
    );
    // A zero balance: not even one call.
    assert_eq!(
        call(&app, "/api/v1/tools/uuid", &user).await,
        (402, "credits_exhausted".to_owned())
    );
    app.flush_meter().await;
    assert_eq!(usage_of(&app.db, user.id, "tools-uuid", &this_period()).await, (0, 0));

    let res = app
        .post_auth(
            &format!("/api/v1/finance/users/{}/credits", user.id),
            &finance.token,
            &json!({"amount": "0.10", "reference": "wire-cap-1"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let mut served = 0;
    loop {
        let (status, code) = call(&app, "/api/v1/tools/uuid", &user).await;
        if status != 200 {
            assert_eq!((status, code.as_str()), (402, "credits_exhausted"));
            break;
        }
        served += 1;
        assert!(served < 100, "never refused");
    }
    app.flush_meter().await;
    let (exact, total) = charged(&app, &user).await;
    let ledger = app.get_json("/api/v1/credits", &user.token).await;
    let balance = dec(&ledger["balance"]);
    println!("prepaid 0.10: {served} calls served, charged {exact} ({total} rounded), balance {balance}");
    assert!(total <= dec!(0.10) && exact <= dec!(0.10));
    assert_eq!(balance, dec!(0.10) - total, "the credit paid for all of it");
    assert!(total >= dec!(0.09), "{total}: refused far too early");
    // Prepaid-only lifted: the user may spend on account again.
    let res = app
        .put_auth(
            &cap_path,
            &finance.token,
            &json!({"amount": null, "prepaid_only": false}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(call(&app, "/api/v1/tools/uuid", &user).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_cap_applies_at_once_to_budget_already_leased() {
    let app = TestApp::spawn().await;
    let user = app.new_user().await;
    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "10.00"}))
        .await;
    assert_eq!(res.status(), 200);
    // Far from the cap: the lease took at least an eighth of it (less what
    // a flush of the three calls has released since).
    for _ in 0..3 {
        assert_eq!(call(&app, "/api/v1/tools/uuid", &user).await.0, 200);
    }
    let held = app
        .sql_row("SELECT coalesce(sum(held), 0)::text AS a, '' AS b FROM spend_leases")
        .await;
    assert!(held[0].parse::<Decimal>().unwrap() >= dec!(1.2), "held {}", held[0]);

    let res = app
        .put_auth("/api/v1/billing/cap", &user.token, &json!({"amount": "0.01"}))
        .await;
    assert_eq!(res.status(), 200);
    let mut served = 0;
    while call(&app, "/api/v1/tools/uuid", &user).await.0 == 200 {
        served += 1;
        assert!(served < 100, "the lease taken under the old cap is still being spent");
    }
    app.flush_meter().await;
    let (exact, total) = charged(&app, &user).await;
    println!("cap lowered to 0.01 after 3 calls: {served} more served, charged {exact} ({total} rounded)");
    assert!(
        exact <= dec!(0.01) && total <= dec!(0.01),
        "{served} more served: {exact} / {total}"
    );
}
